from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from statusek.app.settings import Settings
from statusek.app.worker import Worker
from tests.conftest import fresh_database, fresh_vhost
from tests.integration.wire import Wire

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def settings(amqp_url: str, database_url: str, models_path: str) -> Settings:
    return Settings(
        amqp_url=amqp_url,
        database_url=database_url,
        models_path=models_path,
        sweep_max_sleep=2.0,
        log_level="WARNING",
    )


@pytest.fixture(scope="session")
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    """One in-process worker for the session, stopped gracefully at the end."""
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.started.wait())
    await asyncio.wait([task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    yield worker
    worker.request_stop()
    await asyncio.wait_for(task, 30)


@pytest.fixture(scope="session")
async def wire(worker: Worker, amqp_url: str) -> AsyncIterator[Wire]:
    wire = await Wire.open(amqp_url)
    yield wire
    await wire.close()


class Cluster:
    """Worker processes on a vhost of their own, with no in-process worker beside them."""

    def __init__(self, env: dict[str, str], wire: Wire):
        self.env = env
        self.wire = wire
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> list[subprocess.Popen[bytes]]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "statusek", "worker"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        self.workers.extend(procs)
        return procs

    async def consumers(self, queue: str = "statusek.queries") -> int:
        # Every worker consumes queries; the SAC command queue counts only its active one.

        q = await self.wire.channel.declare_queue(queue, passive=True)
        return int(q.declaration_result.consumer_count or 0)

    async def wait_for_consumers(self, count: int, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                if await self.consumers() >= count:
                    return
            except Exception:
                # The queue does not exist until the first worker declares it.
                self.wire.channel = await self.wire.connection.channel(publisher_confirms=True)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{count} consumers did not appear")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.terminate()
        for p in self.workers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
async def cluster(worker_env: dict[str, str]) -> AsyncIterator[Cluster]:
    """A vhost and a database of its own, and worker processes the test starts (one at first)."""
    async with fresh_database() as db_url:
        with fresh_vhost() as url:
            env = {**worker_env, "STATUSEK_AMQP_URL": url, "STATUSEK_DATABASE_URL": db_url}
            cluster = Cluster(env, wire=None)  # type: ignore[arg-type]
            try:
                cluster.start(1)
                await _wait_topology(url)
                cluster.wire = await Wire.open(url)
                yield cluster
            finally:
                cluster.stop()
                if cluster.wire is not None:
                    await cluster.wire.close()


async def _wait_topology(url: str) -> None:
    """Wait until a worker has declared the topology (Wire binds to statusek.events)."""
    connection = await aio_pika.connect(url)
    try:
        for _ in range(150):
            channel = await connection.channel()
            try:
                await channel.declare_exchange("statusek.events", passive=True)
                await channel.declare_queue("statusek.commands", passive=True)
                return
            except Exception:
                await asyncio.sleep(0.2)
        raise TimeoutError("no worker declared the topology")
    finally:
        await connection.close()


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
