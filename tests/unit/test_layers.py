"""One-way imports between the programs: what importing a module loads, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# What the gateway and the CLI's remote commands run without: `worker`, `migrate` and `grant`
# import these inside the command.
WORKER_AND_POSTGRES = ("statusek.worker", "statusek.adapters.postgres", "asyncpg")
BROKER_AND_DATABASE_LIBRARIES = ("aio_pika", "aiormq", "asyncpg")


def loaded(code: str) -> list[str]:
    """The modules loaded once `code` ran in a fresh interpreter that imports this checkout's statusek."""
    code += "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    modules: list[str] = json.loads(done.stdout)
    return modules


def within(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages)]


@pytest.mark.parametrize(
    "module", ["statusek.gateway.server", "statusek.cli.main", "statusek.cli.remote", "statusek.cli.plot"]
)
def test_the_gateway_and_the_cli_load_neither_the_worker_nor_postgres(module: str) -> None:
    """Importing the gateway or the command line loads no module of the worker, of Postgres or asyncpg."""
    assert within(loaded(f"import {module}"), WORKER_AND_POSTGRES) == []


def test_the_worker_loads_postgres() -> None:
    """The check above sees what it looks for: the worker does load the Postgres adapter and asyncpg."""
    modules = loaded("import statusek.worker.worker")
    assert {"statusek.adapters.postgres.store", "asyncpg"} <= set(modules)


def test_the_core_loads_no_broker_or_database_library() -> None:
    """Every module of the core imports without aio-pika, aiormq or asyncpg: the core is pure."""
    code = (
        "import importlib, pkgutil, statusek.core\n"
        "for m in pkgutil.iter_modules(statusek.core.__path__):\n"
        "    importlib.import_module(f'statusek.core.{m.name}')\n"
    )
    assert within(loaded(code), BROKER_AND_DATABASE_LIBRARIES) == []


def test_the_client_loads_neither_the_worker_nor_the_workers_broker_adapter() -> None:
    """The client library stands on the broker's endpoints and errors, not the worker's broker.py."""
    modules = loaded("import statusek.client")
    assert within(modules, (*WORKER_AND_POSTGRES, "statusek.adapters.rabbitmq.broker")) == []
