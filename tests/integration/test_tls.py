"""TLS to RabbitMQ (amqps:// with cafile) and to Postgres (sslmode=verify-full), set by URL parameters.

The servers are this module's own, started here with TLS whatever
STATUSEK_TEST_BACKEND says (tests/integration/tls.py); the certificates are
made for the run by a throw-away CA, and a second CA stands for the wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from statusek import BrokerUnreachable, Client
from statusek.settings import BUILTIN_MODELS, Settings
from statusek.testing import free_port, running_worker
from statusek.worker.worker import Worker
from tests.helpers import TASK, statusek
from tests.integration.tls import (
    PG_PASSWORD,
    Pki,
    TlsPostgres,
    TlsRabbit,
    make_pki,
    postgres_with_tls,
    rabbitmq_with_tls,
)
from tests.log_secrets import password

# Its own RabbitMQ and Postgres with TLS: CI's second run (containers, 4 partitions) skips it.
pytestmark = [pytest.mark.integration, pytest.mark.standalone]

AMQP_PASSWORD = password("amqp-password-" + secrets.token_hex(4))
VERIFY_FAILED = "TLS certificate verification failed"


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = Path(tempfile.mkdtemp(prefix="statusek-tls-pki-"))
    try:
        yield make_pki(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def rabbit(pki: Pki) -> Iterator[TlsRabbit]:
    with rabbitmq_with_tls(pki) as rabbit:
        yield rabbit


@pytest.fixture(scope="module")
def postgres(pki: Pki) -> Iterator[TlsPostgres]:
    with postgres_with_tls(pki) as postgres:
        yield postgres


def verify_full(postgres: TlsPostgres, database: str, ca: Path) -> str:
    return postgres.url(database, f"sslmode=verify-full&sslrootcert={ca}")


def settings_for(amqp_url: str, database_url: str, ops_port: int = 0) -> Settings:
    return Settings(
        amqp_url=amqp_url,
        database_url=database_url,
        models_path=str(BUILTIN_MODELS),
        log_level="WARNING",
        ops_port=ops_port,
        ops_host="127.0.0.1",
        retry_backoff_max=0.5,
    )


@pytest.fixture(scope="module")
async def worker(pki: Pki, rabbit: TlsRabbit, postgres: TlsPostgres) -> AsyncIterator[Worker]:
    """A worker on amqps:// and verify-full; its database does not exist yet, so it creates it."""
    settings = settings_for(rabbit.url(pki.ca), verify_full(postgres, "statusek_tls", pki.ca))
    async with running_worker(settings) as worker:
        yield worker


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


async def problem_of(settings: Settings, dependency: str, expected: str, timeout: float = 30) -> str:
    """Run a worker until its /readyz reports `expected` for `dependency`; return that report."""
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            if task.done():
                task.result()
                raise AssertionError("the worker stopped by itself")
            status, body = await asyncio.to_thread(_readyz, settings.ops_port)
            problems = body.get("problems")
            problem = str(problems.get(dependency, "")) if isinstance(problems, dict) else ""
            if expected in problem:
                assert status == 503 and not worker.started.is_set()
                return problem
            if loop.time() > deadline:
                raise AssertionError(f"/readyz did not report {expected!r} within {timeout} s: {body}")
            await asyncio.sleep(0.2)
    finally:
        # The wait for Postgres at start does not watch request_stop: cancel what is left.
        worker.request_stop()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_worker_serves_commands_over_amqps_and_verify_full(
    worker: Worker, pki: Pki, rabbit: TlsRabbit, postgres: TlsPostgres
) -> None:
    """A worker on amqps:// (cafile) and verify-full applies commands, and every link it holds is TLS."""
    async with await Client.connect(rabbit.url(pki.ca)) as client:
        token = await client.create(TASK)
        await client.set_status(token, "STARTED")
        await client.set_status(token, "FINISHED")
        assert await client.wait_finished(token, timeout=10) == "ALL_MANDATORY_STATUSES_ARE_SET"
        connections = rabbit.rabbitmqctl("list_connections", "ssl", "--no-table-headers").split()
        assert len(connections) >= 2 and set(connections) == {"true"}  # the worker's and the client's
    conn = await asyncpg.connect(verify_full(postgres, "statusek_tls", pki.ca))
    try:
        sessions, all_tls = await conn.fetchrow(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.datname = 'statusek_tls' AND a.pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert sessions >= 1 and all_tls is True


async def test_worker_refuses_a_broker_certificate_of_another_ca(
    pki: Pki, rabbit: TlsRabbit, postgres: TlsPostgres, capfd: pytest.CaptureFixture[str]
) -> None:
    """With cafile naming another CA, the worker never consumes and says the certificate failed."""
    settings = settings_for(
        rabbit.url(pki.other_ca, user="statusek", password=AMQP_PASSWORD),
        verify_full(postgres, "statusek_tls_wrong_amqp_ca", pki.ca),
        ops_port=free_port(),
    )
    problem = await problem_of(settings, "rabbitmq", VERIFY_FAILED)
    assert "cafile" in problem
    out, err = capfd.readouterr()
    assert VERIFY_FAILED in out + err  # the log line says it too
    assert AMQP_PASSWORD not in problem + out + err


async def test_worker_refuses_a_postgres_certificate_of_another_ca(
    pki: Pki, rabbit: TlsRabbit, postgres: TlsPostgres, capfd: pytest.CaptureFixture[str]
) -> None:
    """With sslrootcert naming another CA, the worker waits for Postgres and says the certificate failed."""
    settings = settings_for(
        rabbit.url(pki.ca),
        verify_full(postgres, "statusek_tls_wrong_pg_ca", pki.other_ca),
        ops_port=free_port(),
    )
    problem = await problem_of(settings, "postgres", VERIFY_FAILED)
    assert "sslrootcert" in problem
    out, err = capfd.readouterr()
    assert VERIFY_FAILED in out + err
    assert PG_PASSWORD not in problem + out + err


async def test_postgres_takes_verify_full_and_rejects_plain_connections(
    pki: Pki, postgres: TlsPostgres
) -> None:
    """verify-full with the right CA gets a TLS session; the same server rejects a connection without TLS."""
    conn = await asyncpg.connect(verify_full(postgres, "postgres", pki.ca))
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(postgres.url("postgres", "sslmode=disable"))


async def test_cli_creates_and_shows_over_amqps(worker: Worker, pki: Pki, rabbit: TlsRabbit) -> None:
    """`statusek create` and `show` reach the worker on amqps:// by the host name the certificate names."""
    url = f"amqps://guest:guest@localhost:{rabbit.port}/?cafile={pki.ca}"
    env = {**os.environ, "STATUSEK_AMQP_URL": url}

    created = await statusek(env, "create", TASK)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    shown = await statusek(env, "show", token)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"instance   {token}"


async def test_client_refuses_a_broker_certificate_of_another_ca(pki: Pki, rabbit: TlsRabbit) -> None:
    """Client.connect with cafile naming another CA raises BrokerUnreachable saying the certificate failed."""
    with pytest.raises(BrokerUnreachable, match=VERIFY_FAILED) as raised:
        await Client.connect(rabbit.url(pki.other_ca, user="statusek", password=AMQP_PASSWORD), timeout=10)
    assert AMQP_PASSWORD not in str(raised.value)
