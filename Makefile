# AADS: two commands on a fresh machine. `make demo` runs the main job, `make test` the tests.
# torch==2.13.0 is installed FIRST (the CPU wheel on this disk); installing anything that
# depends on torch before it makes pip pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aads-installed
# Linters with heavy pins (checkov) live in their own virtualenv; tests call their binaries.
TOOLS  ?= .venv-tools
TOOLS_STAMP := $(TOOLS)/.aads-tools-installed
CONFIG ?= config/demo.yaml
WORKDIR ?= .aads/demo
# No network at run time: MLflow 3 would otherwise send usage telemetry from every process.
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup tools promtool demo test test-fast bench lint format clean images image-serving \
	image-components lock chart print-registry print-version

# Images: the registry and organisation are named once, in config/cluster.yaml; override with
# `make images REGISTRY=registry.example.com/org` (PUSH=1 pushes instead of loading locally).
REGISTRY ?= $(shell sed -n 's/^registry: *//p' config/cluster.yaml)
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The commit time, not the build time: the same commit builds the same labels.
CREATED  ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
PLATFORM ?= linux/amd64
DOCKER   ?= docker
PUSH     ?=
# Extra buildx flags, e.g. CACHE="--cache-from type=gha --cache-to type=gha,mode=max" in CI.
CACHE    ?=

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

tools: $(TOOLS_STAMP) promtool

# promtool and the prometheus server (the alert-rule tests run both, and the demo's field loop
# runs the server) from Debian's prometheus package: installed only where apt-get exists and we
# are root (CI is); elsewhere those tests skip and the demo's alert step is left out, saying why. Where systemd runs, the package's service is stopped again: the tests
# start their own server on 127.0.0.1.
promtool:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null \
	    && if [ -d /run/systemd/system ]; then systemctl disable --now prometheus || true; fi ) \
	  || echo "warning: Debian's prometheus package did not install: the promtool tests skip"; \
	else echo "note: prometheus needs apt-get as root to install: its tests skip, the demo shows no alert"; fi

$(TOOLS_STAMP): requirements/tools.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet -r requirements/tools.txt
	@touch $(TOOLS_STAMP)

demo: setup promtool
	$(BIN)/aads pipeline demo

test: setup tools
	$(BIN)/python -m pytest

# The inner loop: every test not marked slow (no real servers, training runs, Helm renders or
# linters). `make test` (what CI runs) still runs everything.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -q

bench: setup
	$(BIN)/python benchmarks/backbone.py
	$(BIN)/python benchmarks/sd_lora_forward.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/continual.py
	$(BIN)/python benchmarks/ood.py
	$(BIN)/python benchmarks/gaussians.py
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/vlm.py
	$(BIN)/python benchmarks/capture.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/alerts.py
	$(BIN)/python benchmarks/telemetry.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .aads .pytest_cache .ruff_cache

images: image-serving image-components

BUILD = $(DOCKER) buildx build --platform $(PLATFORM) $(CACHE) \
	--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg CREATED=$(CREATED) \
	$(if $(PUSH),--push,--load)

image-serving:
	$(BUILD) -f serving/Dockerfile -t $(REGISTRY)/aads-serving:$(VERSION) .

image-components:
	$(BUILD) -f components/Dockerfile -t $(REGISTRY)/aads-components:$(VERSION) .

# Re-pin what the images install (requirements/serving.txt, requirements/components.txt).
lock: setup
	$(BIN)/python requirements/lock.py --sizes

# The chart as an OCI artifact: dist/aads-<version>.tgz (needs the helm binary).
chart:
	helm package charts --version $(VERSION) --app-version $(VERSION) -d dist

print-registry:
	@echo $(REGISTRY)

print-version:
	@echo $(VERSION)
