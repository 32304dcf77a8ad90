from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
