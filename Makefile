# The two commands: `make run` (the main job) and `make test` (lint, types, tests).
# Each creates .venv when missing, installs fedmoe with its pinned dependencies and
# makes sure Fashion-MNIST is present before doing its job.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedmoe-installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test setup data lint bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	bash scripts/ensure-fashion-mnist.sh $(PY)

run: data
	$(VENV)/bin/fedmoe data info fashion-mnist
	rm -rf runs/quick  # a run directory holds one run; make run replaces the last one
	$(VENV)/bin/fedmoe run --preset quick --out runs/quick

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy

test: data lint
	$(VENV)/bin/pytest

# Benchmarks (not part of the tests): the contenders need the `bench` extra.
$(VENV)/.fedmoe-bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

bench-quick: data $(VENV)/.fedmoe-bench
	$(PY) bench/run.py --quick

bench: data $(VENV)/.fedmoe-bench
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
