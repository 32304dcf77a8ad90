"""Waiting between retries of transient failures."""

from __future__ import annotations

import asyncio
import contextlib


class Backoff:
    """Exponential delay between retries of transient failures, capped."""

    def __init__(self, cap: float, first: float = 0.05):
        self.cap, self.first, self.delay = cap, first, first

    async def wait(self, interrupt: asyncio.Event | None = None) -> None:
        """Sleep the current delay, or less if `interrupt` is set meanwhile."""
        if interrupt is None:
            await asyncio.sleep(self.delay)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay):
                    await interrupt.wait()
        self.delay = min(self.cap, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first
