# The first two targets are the README's first two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit bench chaos clean

run: $(VENV)/.installed
	$(BIN)/faregate serve --new-key

test: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/overhead.py

chaos: $(VENV)/.dev-installed
	CHAOS_REQUESTS=20000 CHAOS_REPORT=bench/results/chaos.json $(BIN)/pytest -q tests/test_chaos.py -k money
	cat bench/results/chaos.json

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV) .faregate .pytest_cache .mypy_cache .ruff_cache
