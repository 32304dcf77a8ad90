"""The broker connection's CorkedWriter against the real RabbitMQ: messages published together
leave in one socket write, and each is still confirmed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

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
