# fleetops — two commands matter: `make demo` and `make test`. Each sets up everything it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
CLUSTERS ?= 12

.PHONY: help setup system-deps test lint typecheck contracts pytest demo sandbox docs clean

help:
	@echo "make demo   - Prefect server + UI and a sandbox fleet of $(CLUSTERS) clusters, until Ctrl-C"
	@echo "make test   - lint, type checks, import contracts, docs build and the whole test suite"
	@echo "make docs   - build the documentation site into site/"

# uv, bootstrapped with pip into .tools when the machine has none.
.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

# Tools from the OS package manager: kubectl (the tests drive it against the sandbox), diff
# (kubectl diff shells out to it) and PostgreSQL's server binaries (the inventory tests start a
# throwaway server). Debian's kubernetes-client provides kubectl when it is missing.
system-deps:
	@missing=""; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	command -v diff >/dev/null 2>&1 || missing="$$missing diffutils"; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from apt:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The virtual environment, exactly as uv.lock pins it.
$(BIN)/python: pyproject.toml uv.lock | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --python 3.11
	@touch $(BIN)/python

setup: system-deps $(BIN)/python

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

contracts: setup
	$(BIN)/lint-imports

docs: setup
	$(BIN)/mkdocs build --strict --quiet

pytest: setup
	$(BIN)/pytest

test: lint typecheck contracts docs pytest

demo: setup
	$(BIN)/python -m sandbox.demo --clusters $(CLUSTERS)

clean:
	rm -rf .demo site .pytest_cache .mypy_cache .ruff_cache
