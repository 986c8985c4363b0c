"""Typed, validated specs: scenario, hardware, model, layout, workload; presets; units."""

from .errors import RacksimError, SpecError
from .hardware import Hardware
from .layout import Layout
from .model import Model
from .presets import list_presets, load_hardware, load_model
from .scenario import Scenario, load_scenario, scenario_from_dict, scenario_json_schema

__all__ = [
    "Hardware", "Layout", "Model", "RacksimError", "Scenario", "SpecError", "list_presets",
    "load_hardware", "load_model", "load_scenario", "scenario_from_dict",
    "scenario_json_schema",
]
