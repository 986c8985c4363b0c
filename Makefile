# Two-command quick start: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SCENARIO ?= scenarios/default.yaml
OUT    ?= out/default

.PHONY: run test bench validate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamps re-install when pyproject.toml changes; then the engine's compiled kernels are
# built once (sim/engine/warm.py), not in every test worker or first run.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m sim.engine.warm
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m sim.engine.warm
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/racksim run $(SCENARIO) --out $(OUT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --nbmake tests notebooks

# Every published case; exits 1 when a category misses the accuracy target (docs/validation.md).
validate: $(VENV)/.installed
	$(BIN)/racksim validate --gate --plot docs/validation.png

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
