"""Oversized bodies: the broker refuses them at the door, and the worker holds little of any it lets through.

The broker's max_message_size ships in deploy/rabbitmq/rabbitmq.conf (and deploy/ensure-services.sh
sets it on the local broker). The memory test raises it for its own run, as a broker without that
line would be, to measure the worker's own handling.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from pathlib import Path

import aio_pika
import aiormq
import pytest

from statusek.settings import Settings
from statusek.testing import Services
from tests.helpers import broker_max_message_size, eventually
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration

MB = 1024 * 1024
CONF = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "rabbitmq.conf"


def shipped_max_message_size() -> int:
    found = re.search(r"^max_message_size\s*=\s*(\d+)\s*$", CONF.read_text(), re.MULTILINE)
    assert found, f"no max_message_size in {CONF}"
    return int(found.group(1))


async def first(channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractIncomingMessage:
    """The first message to arrive in queue `name`, within 10 s."""
    queue = await channel.get_queue(name, ensure=False)
    for _ in range(200):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing arrived in {name}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_the_shipped_broker_limit_leaves_room_for_every_valid_body() -> None:
    """max_message_size is above the worker's body limit (a refusal with a reply) and at most 128 MB."""
    size = shipped_max_message_size()
    assert Settings().max_body_bytes < size <= 128 * MB


async def test_the_shipped_broker_limit_refuses_a_bigger_publish(services: Services, amqp_url: str) -> None:
    """With the shipped max_message_size, a publish one byte over it closes the publisher's channel."""
    size = shipped_max_message_size()
    with broker_max_message_size(services.rabbit, size):
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(exclusive=True)
            await channel.default_exchange.publish(aio_pika.Message(b"x" * size), routing_key=queue.name)
            with pytest.raises(
                (aiormq.exceptions.ChannelPreconditionFailed, aio_pika.exceptions.ChannelClosed)
            ):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"x" * (size + 1)), routing_key=queue.name
                )
                await channel.declare_queue(exclusive=True)  # the close arrives by the next round trip
        finally:
            await connection.close()


async def test_forty_bodies_of_5_mb_keep_the_worker_under_100_mb(
    cluster: Cluster, services: Services
) -> None:
    """40 commands of 5 MB each are dead-lettered, cut, while the worker's RSS stays under 100 MB."""
    with broker_max_message_size(services.rabbit, 128 * MB):
        worker = cluster.start(1)[0]
        await cluster.wait_for_consumers(1)
        await asyncio.sleep(1)  # imports and pools settled
        baseline = rss_kib(worker.pid)
        peak = baseline
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_kib(worker.pid))
                await asyncio.sleep(0.005)

        sampling = asyncio.create_task(sample())
        body = b'{"object_name": "' + b"x" * (5 * MB) + b'"}'
        started = time.monotonic()
        try:
            # A channel of its own: the broker reads its limit when a channel opens.
            publisher = await aio_pika.connect(cluster.env["STATUSEK_AMQP_URL"])
            try:
                channel = await publisher.channel(publisher_confirms=True)
                exchange = await channel.get_exchange("statusek.commands", ensure=False)
                await asyncio.gather(
                    *(exchange.publish(aio_pika.Message(body), routing_key="create") for _ in range(40))
                )
            finally:
                await publisher.close()
            del body

            def dead_lettered() -> Awaitable[int]:
                return cluster.messages("statusek.dead-letter")

            await eventually(dead_lettered, 60, equals=40)
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await sampling
    print(
        f"oversized x40: rss baseline {baseline / 1024:.0f} MB, peak {peak / 1024:.0f} MB,"
        f" {time.monotonic() - started:.1f} s"
    )
    assert peak < 100 * 1024, f"peak RSS {peak / 1024:.0f} MB (baseline {baseline / 1024:.0f} MB)"
