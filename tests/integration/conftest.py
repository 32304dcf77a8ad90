from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest

from statusek.adapters.postgres.grants import grant_worker
from statusek.adapters.rabbitmq.broker import Broker, Names
from statusek.settings import Settings
from statusek.testing import RabbitAdmin, Services, fresh_database, fresh_vhost, running_worker
from statusek.worker.worker import Worker
from tests.helpers import command_partitions
from tests.integration.wire import Wire
from tests.log_secrets import new_password, with_credentials

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def settings(amqp_url: str, database_url: str, models_path: str) -> Settings:
    return Settings(
        amqp_url=amqp_url,
        database_url=database_url,
        models_path=models_path,
        sweep_max_sleep=2.0,
        log_level="WARNING",
        ops_port=0,
        command_partitions=command_partitions(),
    )


@pytest.fixture(scope="session")
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    """One in-process worker for the session, stopped gracefully at the end."""
    async with running_worker(settings) as worker:
        yield worker


@pytest.fixture(scope="session")
async def wire(worker: Worker, amqp_url: str) -> AsyncIterator[Wire]:
    wire = await Wire.open(amqp_url)
    yield wire
    await wire.close()


class Cluster:
    """Worker processes on a vhost and database of their own, started by the test."""

    def __init__(self, env: dict[str, str], vhost: str, logs: Path, rabbit: RabbitAdmin):
        self.env = env
        self.vhost = vhost
        self.logs = logs
        self.rabbit = rabbit  # `rabbitmqctl` where the broker runs
        self.wire: Wire = None  # type: ignore[assignment]
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        procs = []
        for _ in range(count):
            log = (self.logs / f"worker-{len(self.workers)}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "statusek", "worker"],
                env={**self.env, **env},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            self.workers.append(proc)
            procs.append(proc)
        return procs

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers if p.poll() is None]

    async def consumers(self, queue: str = "statusek.queries") -> int:
        # Every worker consumes queries; the command queue (SAC) counts only the active one.
        channel = await self.wire.connection.channel()
        try:
            q = await channel.declare_queue(queue, passive=True)
            return int(q.declaration_result.consumer_count or 0)
        finally:
            await channel.close()

    async def messages(self, queue: str, *, unacked: bool = False) -> int:
        """Ready messages in `queue`, asked of the queue itself (with `unacked`, also those
        delivered and not yet acked, from the statistics).

        Unlike `queue_depths`, whose statistics quorum queues refresh only every few seconds
        (a queue just filled can still read empty), the ready count is current.
        `statusek.commands` counts every command partition.
        """
        names = Names(partitions=command_partitions())
        queues = names.command_queues if queue == names.commands else [queue]
        channel = await self.wire.connection.channel()
        try:
            ready = 0
            for name in queues:
                declared = await channel.declare_queue(name, passive=True)
                ready += int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()
        return ready + (self.queue_depths()[queue][1] if unacked else 0)

    async def wait_for_consumers(self, count: int, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.consumers() < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"{count} consumers did not appear; logs in {self.logs}{self._last_complaint()}"
                )
            await asyncio.sleep(0.1)

    def _last_complaint(self) -> str:
        """The workers' last warning or error, to name why they do not consume (a missing plugin)."""
        complaints = [line for line in self.log_lines() if line.get("level") in ("warning", "error")]
        if not complaints:
            return ""
        last = complaints[-1]
        return f"; the last warning: {last.get('event')} {last.get('error', '')}".rstrip()

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Queue name -> (ready, unacked), from the broker itself.

        The command partitions are summed under `statusek.commands`, so a test
        reads the same with one partition or several.
        """
        depths = self.rabbit.list_queues(self.vhost)
        partitions = [d for name, d in depths.items() if name.startswith("statusek.commands.")]
        if partitions and "statusek.commands" in depths:
            ready, unacked = depths["statusek.commands"]
            depths["statusek.commands"] = (
                ready + sum(r for r, _ in partitions),
                unacked + sum(u for _, u in partitions),
            )
        return depths

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for path in sorted(self.logs.glob("worker-*.log")):
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{"):
                    lines.append(json.loads(raw))
        return lines

    def stop(self) -> None:
        for p in self.alive:
            p.terminate()
        for p in self.workers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
async def cluster(
    services: Services,
    worker_env: dict[str, str],
    tmp_path: Path,
    amqp_user_url: str,
    database_owner_url: str,
) -> AsyncIterator[Cluster]:
    """A vhost and a database of their own (the session's user and role's); the test starts the workers."""
    async with fresh_database(database_owner_url) as db_url:
        with fresh_vhost(amqp_user_url, admin=services.rabbit) as url:
            broker = await Broker.connect(url, Names(partitions=command_partitions()))
            try:
                await broker.declare()
            finally:
                await broker.close()
            env = {**worker_env, "STATUSEK_AMQP_URL": url, "STATUSEK_DATABASE_URL": db_url}
            cluster = Cluster(env, unquote(urlsplit(url).path[1:]), tmp_path, services.rabbit)
            cluster.wire = await Wire.open(url)
            try:
                yield cluster
            finally:
                cluster.stop()
                await cluster.wire.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session's database."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def cluster_db(cluster: Cluster) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the cluster's database."""
    conn = await asyncpg.connect(cluster.env["STATUSEK_DATABASE_URL"])
    yield conn
    await conn.close()


# --- an owner role and a worker role of their own (least-privilege and retention tests) ---


@dataclass(frozen=True)
class Database:
    owner_url: str  # as the owner role, who made the database and migrated it
    role: str
    role_url: str  # as the worker's role (LOGIN, password), granted nothing yet unless `granted`


async def as_admin(services: Services, statement: str, database: str | None = None) -> None:
    url = services.database_url
    if database is not None:
        url = urlunsplit(urlsplit(url)._replace(path="/" + database))
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture
async def database(services: Services) -> AsyncIterator[Database]:
    """A database made and migrated by an owner role (not a superuser), and a bare LOGIN role."""
    suffix = secrets.token_hex(4)
    owner, role = f"statusek_priv_owner_{suffix}", f"statusek_priv_worker_{suffix}"
    owner_password, role_password = new_password(16), new_password(16)
    await as_admin(services, f"CREATE ROLE {owner} LOGIN CREATEDB PASSWORD '{owner_password}'")
    try:
        await as_admin(services, f"CREATE ROLE {role} LOGIN PASSWORD '{role_password}'")
        try:
            async with fresh_database(
                with_credentials(services.database_url, owner, owner_password)
            ) as owner_url:
                try:
                    yield Database(owner_url, role, with_credentials(owner_url, role, role_password))
                finally:
                    name = urlsplit(owner_url).path[1:]
                    await as_admin(services, f"DROP OWNED BY {role}", database=name)
        finally:
            await as_admin(services, f"DROP ROLE IF EXISTS {role}")
    finally:
        # fresh_database leaves its database behind when migrating fails; the owner's go with it.
        admin = await asyncpg.connect(services.database_url)
        try:
            for row in await admin.fetch(
                "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = $1",
                owner,
            ):
                await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
            await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        finally:
            await admin.close()


@pytest.fixture
async def granted(database: Database) -> Database:
    """The database after `statusek migrate --grant ROLE` (the function)."""
    await grant_worker(database.owner_url, database.role)
    return database
