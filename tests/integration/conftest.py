from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from statusek.app.settings import Settings
from statusek.app.worker import Worker
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


@pytest.fixture
def three_workers(worker_env: dict[str, str], worker: Worker) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three worker processes beside the session's in-process one, stopped with SIGTERM."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "statusek", "worker"],
            env=worker_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(3)
    ]
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()
