# Neural platform: one entry point for setup, tests, lint and benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint unit bench clean

setup: $(STAMP)

# Re-runs only when the dependency lists change, so `make setup` is cheap and idempotent.
$(STAMP): requirements.txt pyproject.toml libs/neural_dsl/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e libs/neural_dsl
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check libs tests bench
	$(VENV)/bin/ruff format --check libs tests bench

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) bench/dsl_parse.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
