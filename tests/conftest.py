"""Shared fixtures: real RabbitMQ and Postgres, isolated per test session.

The broker and database server are the local ones, or containers started for
the session (STATUSEK_TEST_BACKEND=containers, or by itself when the local
services do not answer but Docker does; see statusek.testing). Each session gets
its own RabbitMQ vhost and its own database, both removed afterwards. Tests
isolate themselves further by using fresh instance tokens.

The session logs in as a RabbitMQ user and a Postgres role of its own, each with
a random password, so that the password grep (tests/log_secrets.py) has real
passwords to look for in every line the run logged.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    Services,
    backing_services,
    fresh_database,
    fresh_vhost,
)
from tests.helpers import SHIPPED_MODELS, TEST_MODELS, command_partitions
from tests.log_secrets import PasswordGrep, new_password, with_credentials

# The local services only: fixtures use `services`, which may be containers instead.
AMQP_URL = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
DATABASE_URL = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)

_USED: list[Services] = []


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("statusek-password-grep"):
        config.pluginmanager.register(PasswordGrep(), "statusek-password-grep")


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The session's broker and database server (and the `rabbitmqctl` that manages the broker)."""
    with backing_services() as services:
        _USED.append(services)
        yield services


@pytest.fixture(scope="session")
def amqp_user_url(services: Services) -> Iterator[str]:
    """The broker as a user of this session with a random password, deleted afterwards.

    Not an administrator: it may use the vhosts `fresh_vhost(amqp_user_url, ...)` makes for it.
    """
    user = f"statusek-test-user-{secrets.token_hex(4)}"
    secret = new_password(18)
    services.rabbit.rabbitmqctl("add_user", user, secret)
    try:
        yield with_credentials(services.amqp_url, user, secret)
    finally:
        services.rabbit.rabbitmqctl("delete_user", user)


@pytest.fixture(scope="session")
async def database_owner_url(services: Services) -> AsyncIterator[str]:
    """The database server as a role of this session with a random password, dropped afterwards.

    The role may create databases (`fresh_database(database_owner_url)` makes ones it owns and
    migrates) and roles. Local and container servers trust 127.0.0.1, so they do not ask for the
    password; it is in the URL all the same, where a leak would show it.
    """
    role = f"statusek_test_owner_{secrets.token_hex(4)}"
    secret = new_password(18)  # letters, digits, - and _: safe inside '...'
    await _as_admin(services, f"CREATE ROLE \"{role}\" LOGIN CREATEDB CREATEROLE PASSWORD '{secret}'")
    try:
        yield with_credentials(services.database_url, role, secret)
    finally:
        await _as_admin(services, f'DROP ROLE "{role}"')


async def _as_admin(services: Services, statement: str) -> None:
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def amqp_url(services: Services, amqp_user_url: str) -> Iterator[str]:
    """A fresh vhost for the session's in-process worker, as the session's user."""
    with fresh_vhost(amqp_user_url, admin=services.rabbit) as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(database_owner_url: str) -> AsyncIterator[str]:
    """A fresh database for the session's in-process worker, owned by the session's role."""
    async with fresh_database(database_owner_url) as url:
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
        "STATUSEK_COMMAND_PARTITIONS": str(command_partitions()),
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
