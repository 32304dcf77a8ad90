"""A worker waiting at start for a dependency still stops at once when asked."""

from __future__ import annotations

import asyncio
import time

import pytest

from statusek.settings import Settings
from statusek.worker.worker import Worker

pytestmark = pytest.mark.integration


async def test_a_stop_ends_the_wait_for_postgres(settings: Settings) -> None:
    """SIGTERM to a worker retrying an unreachable Postgres ends it within a second, not at the next retry."""
    unreachable = settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/statusek", "retry_backoff_max": 30.0}
    )
    worker = Worker(unreachable)
    task = asyncio.create_task(worker.run())
    # Let it fail a few times so its backoff has grown well past a second.
    await asyncio.sleep(4)
    assert not task.done()
    asked = time.monotonic()
    worker.request_stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - asked < 1.0


async def test_a_cancelled_worker_leaves_none_of_its_tasks_running(settings: Settings) -> None:
    """A running worker's task cancelled (its caller gave up) ends its consumer, relay and the rest."""
    before = asyncio.all_tasks()
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.started.wait(), 60)
    its_own = [t for t in asyncio.all_tasks() - before if t is not task]
    assert {"consumer", "relay", "listener", "sweeper"} <= {t.get_name() for t in its_own}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert sorted(t.get_name() for t in its_own if not t.done()) == []
