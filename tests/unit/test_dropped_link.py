"""A link aiormq drops (its reader cancelled) is a link error, never a cancellation."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from statusek.adapters.rabbitmq.errors import LinkDropped, describe, dropped_link_as_error, translated
from statusek.core.errors import BrokerUnavailable


def given_up_future() -> asyncio.Future[None]:
    """What aiormq leaves a confirm or a drain of a connection it dropped: its reader's CancelledError."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(asyncio.CancelledError())
    return future


async def test_translated_says_the_link_was_dropped() -> None:
    """A CancelledError nobody asked for, under `translated()`, is BrokerUnavailable (retried later)."""
    with pytest.raises(BrokerUnavailable, match="dropped without its answer"):
        async with translated():
            await given_up_future()


async def test_translated_lets_a_real_cancellation_through() -> None:
    """A task cancelled while it waits on the broker stays cancelled."""

    async def waiting() -> None:
        async with translated():
            await asyncio.Event().wait()

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_dropped_link_as_error_raises_a_link_error() -> None:
    """The client's requests catch it with the other link errors, and publish again on a new link."""
    with pytest.raises(aio_pika.exceptions.CONNECTION_EXCEPTIONS) as caught:
        async with dropped_link_as_error():
            await given_up_future()
    assert isinstance(caught.value, LinkDropped)
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


async def test_dropped_link_as_error_lets_a_timeout_cancel() -> None:
    """`asyncio.timeout` around it still ends in TimeoutError: its cancellation is requested."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            async with dropped_link_as_error():
                await asyncio.Event().wait()


def test_describe_says_the_link_was_dropped() -> None:
    """The log line says what happened, not 'CancelledError'."""
    assert "dropped without its answer" in describe(LinkDropped("x"))
