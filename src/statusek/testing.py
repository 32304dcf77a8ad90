"""Throw-away RabbitMQ vhosts and Postgres databases, for tests and benchmarks.

    with fresh_vhost("amqp://guest:guest@127.0.0.1:5672/") as amqp_url:
        async with fresh_database("postgresql://postgres@127.0.0.1:5432/postgres") as db_url:
            ...

The vhost is made with `rabbitmqctl` (so the broker must be local, and the
caller allowed to run it); the database is created, migrated and dropped.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from statusek.adapters.postgres.migrate import migrate

LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_ADMIN_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def fresh_vhost(amqp_url: str, prefix: str = "statusek-test") -> Iterator[str]:
    """The URL of a new vhost on the broker of `amqp_url`, deleted afterwards."""
    vhost = f"{prefix}-{secrets.token_hex(4)}"
    user = urlsplit(amqp_url).username or "guest"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield urlunsplit(urlsplit(amqp_url)._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@asynccontextmanager
async def fresh_database(database_url: str, prefix: str = "statusek_test") -> AsyncIterator[str]:
    """The URL of a new, migrated database on the server of `database_url`, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(database_url)._replace(path="/" + name))
    await migrate(url)
    try:
        yield url
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextmanager
def worker_processes(env: dict[str, str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` `statusek worker` processes with `env`, stopped with SIGTERM afterwards."""
    procs = [subprocess.Popen([sys.executable, "-m", "statusek", "worker"], env=env) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
