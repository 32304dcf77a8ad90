"""One connection to the broker (a link), the errors that end it, and who listens to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

REPLY_TO = "amq.rabbitmq.reply-to"

# Everything aio-pika and aiormq raise when a link or a channel goes away.
_LINK_ERRORS: tuple[type[BaseException], ...] = aio_pika.exceptions.CONNECTION_EXCEPTIONS
_LINK_ERRORS_OR_TIMEOUT: tuple[type[BaseException], ...] = (TimeoutError, *_LINK_ERRORS)

_LOST = object()  # an answer awaited on a link that went down; a notification stream interrupted


@dataclass(eq=False)
class _Link:
    """One connection to the broker with the client's channels on it."""

    connection: AbstractConnection
    channel: AbstractChannel
    # The same channel as aiormq's: requests are published and their replies consumed on it
    # directly, without aio-pika's message objects and the tasks its consumer adds per delivery.
    underlay: aiormq.Channel
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    events: AbstractChannel | None = None
    # Answers awaited on this link. When it goes they are given _LOST, so that a request waits
    # for its answer alone (one future, one timeout) and still hears of the loss at once.
    waiting: set[asyncio.Future[Any]] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return not self.lost.is_set()

    def mark_lost(self) -> None:
        self.lost.set()
        waiting, self.waiting = self.waiting, set()
        for future in waiting:
            if not future.done():
                future.set_result(_LOST)

    async def close(self) -> None:
        self.mark_lost()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.connection.close()


def _nothing() -> None:
    return None


@dataclass(eq=False)
class _Subscription:
    """A listener for notifications and for the link going down and coming back."""

    on_event: Callable[[str, dict[str, Any]], None]
    on_lost: Callable[[], None] = _nothing
    on_restored: Callable[[], None] = _nothing
    on_closed: Callable[[], None] = _nothing
