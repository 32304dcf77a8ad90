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
worker: install
	$(BIN)/statusek worker

## Run every test (unit and integration against the real services).
test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Start RabbitMQ and Postgres when they are down (this machine's packages).
services:
	bash deploy/ensure-services.sh
