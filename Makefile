# AADS: two commands on a fresh machine. `make demo` runs the main job, `make test` the tests.
# torch==2.13.0 is installed FIRST (the CPU wheel on this disk); installing anything that
# depends on torch before it makes pip pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aads-installed
CONFIG ?= config/demo.yaml
WORKDIR ?= .aads/demo
# No network at run time: MLflow 3 would otherwise send usage telemetry from every process.
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/aads pipeline demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/backbone.py
	$(BIN)/python benchmarks/sd_lora_forward.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/continual.py
	$(BIN)/python benchmarks/ood.py
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/vlm.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .aads .pytest_cache .ruff_cache
