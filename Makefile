# Neural platform: one entry point for setup, tests, lint and benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint bench bench-deps clean

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
	$(PY) bench/codegen.py

# Optional baselines for bench/: the original Neural DSL, in a venv of its own (its
# distribution is also called neural-dsl, so it cannot share .venv with ours).
bench-deps:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet neural-dsl==0.2.9 plotly

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .ruff_cache .hypothesis
