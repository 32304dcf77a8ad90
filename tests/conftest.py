"""Shared fixtures: real RabbitMQ and Postgres, isolated per test session.

Each session gets its own RabbitMQ vhost and its own database, both removed
afterwards. Tests isolate themselves further by using fresh instance tokens.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from statusek.adapters.postgres.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
SHIPPED_MODELS = ROOT / "src" / "statusek" / "models"

AMQP_URL = os.environ.get("STATUSEK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE_URL = os.environ.get("STATUSEK_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def fresh_vhost() -> Iterator[str]:
    """The AMQP URL of a new vhost on the test broker, deleted afterwards."""
    vhost = f"statusek-test-{secrets.token_hex(4)}"
    user = urlsplit(AMQP_URL).username or "guest"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield urlunsplit(urlsplit(AMQP_URL)._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A fresh vhost for the session's in-process worker."""
    with fresh_vhost() as url:
        yield url


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, migrated database, dropped afterwards."""
    name = f"statusek_test_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(DATABASE_URL)._replace(path="/" + name))
    await migrate(url)
    try:
        yield url
    finally:
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh database for the session's in-process worker."""
    async with fresh_database() as url:
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
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the counts of every fault-injection scenario that ran."""
    from tests.integration.faults import REPORTS

    if REPORTS:
        terminalreporter.section("fault injection report")
        for report in REPORTS:
            terminalreporter.write_line(f"{report.scenario}: {report.line()}")
