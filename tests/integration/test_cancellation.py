"""Background loops end when cancelled, whenever the cancel lands: a stopping worker waits for them."""

from __future__ import annotations

import asyncio
import random

import pytest

from statusek.adapters.postgres.membership import hold_membership

pytestmark = pytest.mark.integration


async def test_the_membership_loop_ends_at_every_cancel(database_url: str) -> None:
    """100 cancels at random moments of a busy membership loop: every one ends the task."""
    survivors = 0
    for key in range(1, 101):
        task = asyncio.create_task(
            hold_membership(database_url, key, lambda _members: None, every=0.0005, retry_cap=1)
        )
        # Mostly while a query of the loop is in flight or just answered.
        await asyncio.sleep(0.03 + random.random() * 0.01)
        task.cancel()
        await asyncio.wait({task}, timeout=1)
        if not task.done():
            survivors += 1
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
    assert survivors == 0
