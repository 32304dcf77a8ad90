"""Cancellation is never swallowed: the code bounds its waits with asyncio.timeout, not wait_for."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 rebuilt wait_for on asyncio.timeout")
async def test_wait_for_swallows_a_cancel_that_arrives_as_its_inner_wait_completes() -> None:
    """Python 3.11's wait_for returns the result instead of raising: the reason for the rule below."""
    ready = asyncio.Event()

    async def loop_of_waits() -> int:
        rounds = 0
        while rounds < 3:
            await asyncio.wait_for(ready.wait(), 5)
            rounds += 1
        return rounds

    task = asyncio.create_task(loop_of_waits())
    await asyncio.sleep(0)
    ready.set()  # the inner wait completes ...
    task.cancel()  # ... in the same turn of the loop as the cancel
    assert await task == 3  # the cancel was lost: a loop like this never ends when stopped


async def test_asyncio_timeout_keeps_a_cancel_that_arrives_as_its_wait_completes() -> None:
    """The same race under asyncio.timeout ends the task."""
    ready = asyncio.Event()

    async def loop_of_waits() -> None:
        while True:
            async with asyncio.timeout(5):
                await ready.wait()
            await asyncio.sleep(0)

    task = asyncio.create_task(loop_of_waits())
    await asyncio.sleep(0)
    ready.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.cancelled()


def test_the_source_bounds_no_wait_with_wait_for() -> None:
    """No asyncio.wait_for in src/: a worker stopping under load hung on a membership task so."""
    users = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "wait_for(" in line and "def wait_for" not in line and "wait_for_" not in line
    ]
    assert users == []
