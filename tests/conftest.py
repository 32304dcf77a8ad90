"""Shared fixtures: real RabbitMQ and Postgres, isolated per test session.

The broker and database server are the local ones, or containers started for
the session (STATUSEK_TEST_BACKEND=containers, or by itself when the local
services do not answer but Docker does; see statusek.testing). Each session gets
its own RabbitMQ vhost and its own database, both removed afterwards. Tests
isolate themselves further by using fresh instance tokens.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    Services,
    backing_services,
    fresh_database,
    fresh_vhost,
)

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
SHIPPED_MODELS = ROOT / "src" / "statusek" / "models"

# The local services only: fixtures use `services`, which may be containers instead.
AMQP_URL = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
DATABASE_URL = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)

_USED: list[Services] = []


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The session's broker and database server (and the `rabbitmqctl` that manages the broker)."""
    with backing_services() as services:
        _USED.append(services)
        yield services


@pytest.fixture(scope="session")
def amqp_url(services: Services) -> Iterator[str]:
    """A fresh vhost for the session's in-process worker."""
    with fresh_vhost(services.amqp_url, admin=services.rabbit) as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(services: Services) -> AsyncIterator[str]:
    """A fresh database for the session's in-process worker."""
    async with fresh_database(services.database_url) as url:
        yield url


@pytest.fixture(scope="session")
def models_path() -> str:
    return f"{SHIPPED_MODELS}:{TEST_MODELS}"


@pytest.fixture(scope="session")
def worker_env(amqp_url: str, database_url: str, models_path: str) -> dict[str, str]:
    """Environment for a worker subprocess of this session."""
    return {
        **os.environ,
        "STATUSEK_AMQP_URL": amqp_url,
        "STATUSEK_DATABASE_URL": database_url,
        "STATUSEK_MODELS_PATH": models_path,
        "STATUSEK_LOG_FORMAT": "json",
        # Many workers share this host in tests; ops tests give theirs a free port.
        "STATUSEK_OPS_PORT": "0",
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the backing services used, and the counts of every fault-injection and deadline scenario."""
    from tests.integration.faults import REPORTS

    for used in _USED:
        terminalreporter.write_line(
            f"backing services: {used.backend} (RabbitMQ {used.amqp_url.split('@')[-1]}, "
            f"Postgres {used.database_url.split('@')[-1]})"
        )
    if REPORTS:
        terminalreporter.section("fault injection and deadline report")
        for report in REPORTS:
            terminalreporter.write_line(f"{report.scenario}: {report.line()}")
