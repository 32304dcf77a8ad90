"""How the worker's broker connection publishes, against the real RabbitMQ: messages published
together leave in one socket write, each is still confirmed, and a notification nobody is bound
to receive costs no message back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiormq
import pytest

from statusek.adapters.rabbitmq.broker import Broker, Names
from statusek.adapters.rabbitmq.corked import CorkedConnection
from statusek.core.views import Notification
from tests.helpers import command_partitions

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url, Names(partitions=command_partitions()))
    await broker.open()
    await broker.declare()
    yield broker
    await broker.close()


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


async def test_a_notification_no_queue_is_bound_to_comes_back_as_nothing(amqp_url: str) -> None:
    """Notifications to an events exchange without queues are dropped, not returned to the worker."""
    names = Names(events=f"statusek.events.unbound.{uuid.uuid4().hex[:8]}", partitions=command_partitions())
    broker = Broker(amqp_url, names)
    await broker.open()
    try:
        await broker.declare()
        underlay = await (await broker.output()).get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        returned: list[aiormq.abc.DeliveredMessage] = []
        underlay.on_return_callbacks.add(returned.append)
        # RabbitMQ sends a mandatory message's return before its confirm, which this waits for.
        await broker.publish_notifications([notification(k) for k in range(5)])
        assert returned == []
    finally:
        await broker.close()
