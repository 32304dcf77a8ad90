"""A Postgres link that received a FATAL whose close never came: asyncpg refuses every statement
on it ("another operation is in progress"), and statusek treats it as the dead link it is.

The proxy drops the close (`closes_lost`), so the client sees the server's last words and then
silence, as when a FIN is lost behind a NAT: the termination never reaches asyncpg.

The last test is the broker's counterpart: a RabbitMQ link closed while the broker does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from statusek.adapters.postgres.store import DEADLINE_CHANNEL, Store
from statusek.adapters.rabbitmq.errors import translated
from statusek.core.errors import BrokerUnavailable, StoreUnavailable
from tests.helpers import eventually
from tests.integration.faults import proxied

pytestmark = pytest.mark.integration


@pytest.fixture
async def url_losing_closes(database_url: str) -> AsyncIterator[str]:
    """The database through a proxy that drops closes, for connections that name themselves APP."""
    proxy, url = await proxied(database_url, 5432)
    proxy.closes_lost = True
    # asyncpg sends the URL's unknown parameters as server settings.
    yield f"{url}{'&' if '?' in url else '?'}application_name={APP}"
    await proxy.close()


APP = f"dead-link-{uuid.uuid4().hex[:8]}"


async def terminate_backends_behind(db: asyncpg.Connection) -> int:
    """pg_terminate_backend on every backend of APP: each sends a FATAL, then closes.

    Found by application name: where Postgres runs in a container, the client port it sees is
    Docker's, not the proxy's.
    """
    terminated: int = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", APP
    )
    return terminated


async def test_the_listener_reconnects_after_a_fatal_whose_close_was_lost(
    url_losing_closes: str, db: asyncpg.Connection
) -> None:
    """The notification listener's link gets a FATAL and no close: it reconnects and hears NOTIFYs again."""
    url = url_losing_closes
    store = await Store.open(url, min_size=0, max_size=1)
    heard: asyncio.Queue[str] = asyncio.Queue()
    connections = 0

    def connected() -> None:
        nonlocal connections
        connections += 1

    listening = asyncio.create_task(
        store.listen_forever(
            [DEADLINE_CHANNEL],
            lambda _channel, payload: heard.put_nowait(payload),
            connected,
            check_every=0.2,
            retry_cap=0.2,
        )
    )
    try:
        await eventually(lambda: connections, 10, equals=1)
        assert await terminate_backends_behind(db) == 1
        await eventually(lambda: connections, 10, equals=2)
        await db.execute(f"NOTIFY {DEADLINE_CHANNEL}, 'after the FATAL'")
        assert await asyncio.wait_for(heard.get(), 5) == "after the FATAL"
        assert not listening.done()
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await store.close()


async def test_a_transaction_on_a_pooled_link_whose_close_was_lost_is_a_transient_failure(
    url_losing_closes: str, db: asyncpg.Connection
) -> None:
    """A pooled link with a FATAL and no close fails as StoreUnavailable (retried); the next try works."""
    url = url_losing_closes
    store = await Store.open(url, min_size=1, max_size=1)
    try:
        async with store.transaction(fence=0) as tx:
            await tx.now()
        assert await terminate_backends_behind(db) == 1
        await asyncio.sleep(0.2)  # the FATAL arrives; its close never does
        with pytest.raises(StoreUnavailable, match=r"InternalClientError: .* another operation"):
            async with store.transaction(fence=0) as tx:
                await tx.now()
        async with store.transaction(fence=0) as tx:
            assert await tx.now() is not None
    finally:
        await store.close(timeout=1)


async def test_publishes_on_a_broker_link_closed_unanswered_fail_as_broker_unavailable(amqp_url: str) -> None:
    """Closing a link the broker no longer answers fails its waiting publishes as BrokerUnavailable."""
    # aiormq waits 2 s for the broker's Close-Ok, then cancels its reader and ends the connection
    # with that CancelledError: without the translation, each publisher would stop as if cancelled.
    proxy, url = await proxied(amqp_url, 5672)
    try:
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        proxy.stall()

        async def publish() -> None:
            async with translated():
                await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="nowhere")

        publishing = [asyncio.create_task(publish()) for _ in range(4)]
        await asyncio.sleep(0.2)
        await connection.close()
        results = await asyncio.gather(*publishing, return_exceptions=True)
    finally:
        await proxy.close()
    assert [type(r) for r in results] == [BrokerUnavailable] * 4, results
    assert all("dropped without its answer" in str(r) for r in results), results
