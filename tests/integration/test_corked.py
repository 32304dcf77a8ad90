"""How the worker's broker connection publishes, against the real RabbitMQ: messages published
together leave in one socket write, each is still confirmed, neither a reply nor a notification
nobody is bound to receive comes back as a returned message, and a parked copy whose holding queue
is gone is not lost."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from statusek.adapters.rabbitmq.broker import Broker, Names
from statusek.adapters.rabbitmq.corked import CorkedConnection
from statusek.core.codes import Code
from statusek.core.messages import Reply
from statusek.core.views import Notification
from tests.helpers import command_partitions
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def opened(url: str, names: Names | None = None) -> AsyncIterator[Broker]:
    """A worker's broker connection on `url`, its topology declared."""
    broker = Broker(url, names or Names(partitions=command_partitions()))
    await broker.open()
    try:
        await broker.declare()
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    async with opened(amqp_url) as broker:
        yield broker


def notification(k: int) -> Notification:
    token = str(uuid.uuid4())
    # With its instance_token, as a worker sends it: the session's wire files it under that instance.
    body = {"instance_token": token, "seq": k}
    return Notification("status-changed", f"{token}:{k}", token, body, {"instance_token": token})


async def test_notifications_published_together_leave_in_one_socket_write(broker: Broker) -> None:
    """Five notifications of five instances (one wave) are one write, and all five are confirmed."""
    await broker.output()  # its channel's RPCs first, so only the publishing is counted
    connection = broker.connection
    assert isinstance(connection, CorkedConnection)
    writer = connection.transport_factory.writer
    assert writer is not None
    before = writer.writes
    await broker.publish_notifications([notification(k) for k in range(5)])  # raises unless all confirmed
    assert writer.writes - before == 1


async def returns_to(broker: Broker) -> list[aiormq.abc.DeliveredMessage]:
    """The messages the broker returns to `broker`'s publishing channel from now on."""
    underlay = await (await broker.output()).get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    returned: list[aiormq.abc.DeliveredMessage] = []
    underlay.on_return_callbacks.add(returned.append)
    return returned


async def test_a_notification_no_queue_is_bound_to_comes_back_as_nothing(amqp_url: str) -> None:
    """Notifications to an events exchange without queues are dropped, not returned to the worker."""
    names = Names(events=f"statusek.events.unbound.{uuid.uuid4().hex[:8]}", partitions=command_partitions())
    async with opened(amqp_url, names) as broker:
        returned = await returns_to(broker)
        # RabbitMQ sends a mandatory message's return before its confirm, which this waits for.
        await broker.publish_notifications([notification(k) for k in range(5)])
        assert returned == []


async def test_a_reply_to_a_direct_reply_to_consumer_is_delivered_and_not_returned(
    broker: Broker, amqp_url: str
) -> None:
    """A reply reaches its direct reply-to consumer, and no copy of it comes back to the worker."""
    async with await aio_pika.connect(amqp_url) as requester:
        channel = await requester.channel()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            replies.put_nowait(message.body)

        direct = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await direct.consume(on_reply, no_ack=True)
        # The address of this consumer is what the broker puts in a request's reply_to.
        inbox = await channel.declare_queue(exclusive=True)
        request = aio_pika.Message(b"{}", reply_to="amq.rabbitmq.reply-to")
        await channel.default_exchange.publish(request, routing_key=inbox.name)
        delivered = await inbox.get(timeout=5, fail=True)
        assert delivered is not None and delivered.reply_to
        returned = await returns_to(broker)
        reply = Reply.fail(Code.INSTANCE_TOKEN_IS_NOT_FOUND, "no such instance")
        await broker.reply(delivered.reply_to, "c-1", reply)  # returns once confirmed
        async with asyncio.timeout(5):
            assert b"INSTANCE_TOKEN_IS_NOT_FOUND" in await replies.get()
        assert returned == []


async def test_a_copy_parked_after_its_holding_queue_was_deleted_lands_in_the_queue_declared_again(
    cluster: Cluster,
) -> None:
    """Parking into a deleted statusek.rejected declares it again and puts the copy there."""
    url = cluster.env["STATUSEK_AMQP_URL"]
    async with opened(url) as broker, await aio_pika.connect(url) as operator:
        channel = await operator.channel()
        inbox = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="m-1"), routing_key=inbox.name
        )
        original = await inbox.get(timeout=5, fail=True)
        assert original is not None
        await channel.queue_delete("statusek.rejected")
        redeclared: list[str] = []
        broker.on_holding_queue_redeclared = redeclared.append
        await broker.park("statusek.rejected", original, {"x-statusek-code": "INSTANCE_TOKEN_IS_NOT_FOUND"})
        assert redeclared == ["statusek.rejected"]
        rejected = await channel.get_queue("statusek.rejected", ensure=True)
        copy = await rejected.get(timeout=5, fail=True)
        assert copy is not None and copy.message_id == "m-1"
        assert copy.headers["x-statusek-code"] == "INSTANCE_TOKEN_IS_NOT_FOUND"
