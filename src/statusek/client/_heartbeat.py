"""The heartbeat helper: pings an instance while a block of work runs."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any

from statusek.exceptions import InstanceFinishedError, StatusekClientError, StatusekRejected

if TYPE_CHECKING:
    from statusek.client._client import Client


class Heartbeat:
    """Keeps an instance alive while a block of work runs, and stops the work if it ends.

        async with client.heartbeat(token, every=5) as beat:
            for page in pages:
                beat.progress(f"page {page} of {len(pages)}")
                await work(page)

    A ping answered INSTANCE_IS_FINISHED (cancelled, timed out elsewhere)
    cancels the block, and the `async with` raises InstanceFinishedError;
    any other refusal (a message over the size limit, say) stops it the same
    way with its own exception. A ping that gets no answer (broker or worker
    away) is tried again at the next beat, each bounded by `every`: after a
    link cut the pings resume, and if the cut outlasted the heartbeat
    timeout the first answer is INSTANCE_IS_FINISHED.
    """

    def __init__(self, client: Client, token: str, every: float, message: str | None):
        self._client = client
        self.token = token
        self.every = every
        self.message = message
        self.deadline: str | None = None
        self.pings = 0
        self.missed = 0  # beats whose ping got no answer
        self.failure: StatusekRejected | None = None
        self._block: asyncio.Task[Any] | None = None
        self._pinger: asyncio.Task[None] | None = None

    @property
    def finished(self) -> InstanceFinishedError | None:
        """The refusal that ended the block, when it was INSTANCE_IS_FINISHED."""
        return self.failure if isinstance(self.failure, InstanceFinishedError) else None

    def progress(self, message: str) -> None:
        """The message the next pings carry (visible in get-events)."""
        self.message = message

    async def __aenter__(self) -> Heartbeat:
        self._block = asyncio.current_task()
        self.deadline = await self._client.ping(self.token, self.message)
        self.pings += 1
        self._pinger = asyncio.create_task(self._beat())
        return self

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                self.deadline = await self._client.ping(self.token, self.message, timeout=self.every)
                self.pings += 1
            except StatusekRejected as e:
                self.failure = e
                if self._block is not None:
                    self._block.cancel()
                return
            except (TimeoutError, ConnectionError, StatusekClientError):
                self.missed += 1  # the next beat tries again; the deadline has slack for this

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self.failure is not None and exc_type is asyncio.CancelledError and self._block is not None:
            self._block.uncancel()
            raise self.failure
        return False
