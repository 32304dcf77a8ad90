"""Replies go only to reply queues of the requester's own kind; a reply_to naming any other queue is dropped.

Direct reply-to and server-named queues (amq.gen-) take replies as before; a named queue takes
them only when STATUSEK_REPLY_QUEUE_PATTERN admits it. The command is applied either way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from statusek.adapters.rabbitmq import settle
from statusek.adapters.rabbitmq.broker import Broker, Limits, Names
from statusek.core.messages import Reply
from statusek.worker.worker import Worker
from tests.helpers import TASK, command_partitions
from tests.integration.wire import Wire

pytestmark = pytest.mark.integration


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    yield await connection.channel()
    await connection.close()


async def durable_queue(channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractQueue:
    """A queue as another service would keep one; deleted by the caller."""
    return await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})


async def depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    declared = await channel.declare_queue(name, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_a_reply_to_another_services_queue_is_dropped_and_the_command_applied(
    wire: Wire, channel: aio_pika.abc.AbstractChannel
) -> None:
    """A create replying to a durable queue is applied, its reply recorded, and nothing sent there."""
    victim = f"billing.invoices.{uuid.uuid4().hex[:8]}"
    queue = await durable_queue(channel, victim)
    try:
        token, message_id = str(uuid.uuid4()), uuid.uuid4().hex
        body = {"object_name": TASK, "instance_token": token}
        await wire.send("create", body, reply_to=victim, message_id=message_id)
        # The same command again, asked properly: behind the first in its partition, so the
        # first is applied by now and this is its recorded reply.
        again = await wire.request("create", body, message_id=message_id)
        assert again["code"] == "SUCCESS", again
        assert again["data"]["instance_token"] == token
        finished = await wire.query("is-finished", {"instance_token": token})
        assert finished["code"] == "SUCCESS", finished
        assert await depth(channel, victim) == 0
    finally:
        await queue.delete(if_unused=False, if_empty=False)


async def test_a_reply_to_a_named_queue_goes_there_when_the_pattern_admits_it(
    amqp_url: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    """With a pattern, a matching named queue gets the reply; one outside it gets none and is reported."""
    suffix = uuid.uuid4().hex[:8]
    requests, admitted, other = f"test.requests.{suffix}", f"test.replies.{suffix}", f"test.others.{suffix}"
    queues = [await durable_queue(channel, name) for name in (requests, admitted, other)]
    broker = Broker(
        amqp_url,
        Names(partitions=command_partitions()),
        limits=Limits(reply_queue_pattern=r"test\.replies\.[0-9a-f]{8}"),
    )
    refused: list[str] = []
    broker.on_reply_refused = refused.append
    await broker.open()
    try:
        for reply_to in (admitted, other):
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}", reply_to=reply_to, correlation_id=reply_to), routing_key=requests
            )
            delivery = await queues[0].get(no_ack=True, timeout=5)
            assert delivery is not None
            await settle.answer(broker, delivery, Reply.ok("answered"))
        answer = await queues[1].get(no_ack=True, timeout=5)
        assert answer is not None and answer.correlation_id == admitted
        assert await depth(channel, other) == 0
        assert refused == [other]
    finally:
        await broker.close()
        for queue in queues:
            await queue.delete(if_unused=False, if_empty=False)


async def test_a_dropped_reply_is_counted(worker: Worker, wire: Wire) -> None:
    """statusek_replies_refused_total counts each reply dropped for its reply_to."""
    before = worker.metrics.registry.get_sample_value("statusek_replies_refused_total") or 0
    body, message_id = {"object_name": TASK, "instance_token": str(uuid.uuid4())}, uuid.uuid4().hex
    await wire.send("create", body, reply_to="billing.nowhere", message_id=message_id)
    assert (await wire.request("create", body, message_id=message_id))["code"] == "SUCCESS"
    assert worker.metrics.registry.get_sample_value("statusek_replies_refused_total") == before + 1
