"""racksim: a discrete-event simulator of multi-rack LLM inference clusters."""

__version__ = "0.1.0"
