"""Shared fixtures: real RabbitMQ and Postgres, isolated per test session.

Each session gets its own RabbitMQ vhost and its own database, both removed
afterwards. Tests isolate themselves further by using fresh instance tokens.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from statusek.testing import LOCAL_ADMIN_DATABASE_URL, LOCAL_AMQP_URL, fresh_database, fresh_vhost

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
SHIPPED_MODELS = ROOT / "src" / "statusek" / "models"

AMQP_URL = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
DATABASE_URL = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A fresh vhost for the session's in-process worker."""
    with fresh_vhost(AMQP_URL) as url:
        yield url


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh database for the session's in-process worker."""
    async with fresh_database(DATABASE_URL) as url:
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
    """Print the counts of every fault-injection and deadline scenario that ran."""
    from tests.integration.faults import REPORTS

    if REPORTS:
        terminalreporter.section("fault injection and deadline report")
        for report in REPORTS:
            terminalreporter.write_line(f"{report.scenario}: {report.line()}")
