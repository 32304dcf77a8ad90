# Two commands for a fresh machine: `make worker` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: worker test lint install services

$(BIN)/statusek: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/statusek

## Run the worker against the local RabbitMQ and Postgres (it migrates first).
worker: install services
	$(BIN)/statusek worker

## Run every test (unit and integration against the real services).
## `services` first: it starts what is down and enables the broker plugins the tests use
## (the consistent-hash exchange of command partitions), and changes nothing when all is there.
test: install services
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
# No function or method over cyclomatic complexity 20 (radon's rank C).
	$(BIN)/xenon --max-absolute C src

## Start RabbitMQ and Postgres when they are down (this machine's packages).
services:
	bash deploy/ensure-services.sh
