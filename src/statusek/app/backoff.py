"""Waiting between retries of transient failures."""

from __future__ import annotations

import asyncio


class Backoff:
    """Exponential delay between retries of transient failures, capped."""

    def __init__(self, cap: float, first: float = 0.05):
        self.cap, self.first, self.delay = cap, first, first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.cap, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first
