# Both entry points build their own virtual environment, so a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,profile]'
	touch $@ $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(BIN)/loraserve plan examples/quickstart.yaml -o quickstart-plan.yaml

test: $(VENV)/.installed-dev
	$(BIN)/ruff check loraserve tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-run
	$(BIN)/python benchmarks/solver_scale.py

clean:
	rm -rf $(VENV) quickstart-plan.yaml .pytest_cache .mypy_cache .ruff_cache
