# The first two targets are the README's first two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make chaos` sizes; the test suite's quick run passes smaller ones.
CHAOS_REQUESTS ?= 20000
CHAOS_REPORT ?= bench/results/chaos.json
# Extra arguments for bench/overhead.py (e.g. --duration 1 --sequential 50 --streams 2).
BENCH_ARGS ?=
# Processes `make test` and `make unit` run the suite in (pytest-xdist); each test file stays in
# one process, so a module's gateway starts once. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
# Extras `make run` installs beside the core, e.g. EXTRAS=semantic,postgres (README: Install).
EXTRAS ?=

.PHONY: run test unit system-packages lint typecheck bench chaos clean

# The gateway on http://127.0.0.1:4000 with a simulator; prints an API key, a master key and the
# dashboard's URL. The core install is enough for that; a config that turns on more names the
# extra it needs (make run EXTRAS=...).
run: $(VENV)/.installed
ifneq ($(EXTRAS),)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
endif
	$(BIN)/faregate serve --new-key

# Everything the suite needs on a fresh Debian machine: the missing system packages (root, or
# password-less sudo, only when something is missing), the dev dependencies (every extra
# included), then lint, types and every test.
test: system-packages $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The in-process tests only: no server, no browser, no subprocess.
unit: $(VENV)/.dev-installed
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not e2e"

system-packages:
	PYTHON=$(PYTHON) scripts/install-test-packages

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

bench: system-packages $(VENV)/.dev-installed
	$(BIN)/python bench/overhead.py $(BENCH_ARGS)

chaos: $(VENV)/.dev-installed
	mkdir -p $(dir $(CHAOS_REPORT))
	CHAOS_REQUESTS=$(CHAOS_REQUESTS) CHAOS_REPORT=$(CHAOS_REPORT) \
		$(BIN)/pytest -q -p no:cacheprovider --timeout 3600 tests/test_chaos.py -k money
	cat $(CHAOS_REPORT)

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
