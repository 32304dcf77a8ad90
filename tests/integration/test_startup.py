"""A worker waiting at start for a dependency still stops at once when asked; one cancelled or crashed
leaves nothing running behind it, and a crash is an exit that says so."""

from __future__ import annotations

import asyncio
import sys
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


# A `statusek worker` whose purger fails as soon as it starts: the only way to crash a component
# on purpose, since each one handles every failure it knows.
CRASHING_WORKER = """
import sys
from statusek.cli.main import main
from statusek.worker.purger import Purger

async def fails(self: Purger) -> None:
    raise RuntimeError("the purger failed on purpose")

Purger.run = fails
sys.exit(main(["worker"]))
"""


async def test_a_crashed_component_ends_the_worker_with_a_failure_that_names_it(
    worker_env: dict[str, str],
) -> None:
    """`statusek worker` stops when a component crashes, exits 1, and says which and why."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_WORKER, env=worker_env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    last = stderr.decode().strip().splitlines()[-1]
    assert last == (
        "statusek worker: stopped after a component crashed: purger: RuntimeError: "
        "the purger failed on purpose (its traceback is in the log)"
    )
