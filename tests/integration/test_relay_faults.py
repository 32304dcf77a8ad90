"""The outbox relay under faults: a subscriber queue that refuses publishes, and a relay whose session ends.

Relays run in this process against the cluster's vhost and database (no
worker is started), on outbox rows written here: what a window would have
left for the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.postgres.store import Store, outbox_partition
from statusek.adapters.rabbitmq.broker import Broker, Names
from statusek.core.views import Notification
from statusek.worker.metrics import Metrics
from statusek.worker.relay import OutboxRelay
from tests.helpers import command_partitions
from tests.integration.conftest import Cluster


async def write_rows(db: asyncpg.Connection, token: str, seqs: Sequence[int]) -> None:
    """Outbox rows of one instance, handed to the relay (not direct), in seq order."""
    for seq in seqs:
        await db.execute(
            "INSERT INTO outbox (message_id, type, instance_token, body, headers, partition, direct)"
            " VALUES ($1, 'status-changed', $2, $3::jsonb, $4::jsonb, $5, false)",
            f"{token}:{seq}",
            uuid.UUID(token),
            json.dumps({"instance_token": token, "seq": seq}),
            json.dumps({"instance_token": token}),
            outbox_partition(token),
        )


class Subscriber:
    """A queue bound to the events exchange, recording (instance, seq) in arrival order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        self.seen.append((body["instance_token"], body["seq"]))
        await message.ack()

    def copies(self) -> dict[tuple[str, int], int]:
        counts: dict[tuple[str, int], int] = {}
        for key in self.seen:
            counts[key] = counts.get(key, 0) + 1
        return counts

    def backwards(self) -> list[tuple[str, int, int]]:
        """(instance, newest seen, older seq that came after it): any is an anomaly."""
        newest: dict[str, int] = {}
        out = []
        for token, seq in self.seen:
            if seq < newest.get(token, 0):
                out.append((token, newest[token], seq))
            newest[token] = max(seq, newest.get(token, 0))
        return out


@contextlib.asynccontextmanager
async def subscribed(
    cluster: Cluster, **arguments: Any
) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, str]]:
    connection = await aio_pika.connect(cluster.env["STATUSEK_AMQP_URL"])
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"subscriber-{uuid.uuid4()}", exclusive=True, arguments=arguments)
        await queue.bind("statusek.events")
        yield channel, queue.name
    finally:
        await connection.close()


async def consume(channel: aio_pika.abc.AbstractChannel, queue: str, subscriber: Subscriber) -> None:
    declared = await channel.declare_queue(queue, passive=True)
    await declared.consume(subscriber.on_message)


async def run_a_line(cluster: Cluster, token: str) -> None:
    """Create `token` as a 2-POINT LINE TASK, then STARTED and FINISHED, each answered SUCCESS."""
    for routing_key, body in (
        ("create", {"object_name": "2-POINT LINE TASK"}),
        ("set-status", {"status_name": "STARTED"}),
        ("set-status", {"status_name": "FINISHED"}),
    ):
        reply = await cluster.wire.request(routing_key, {"instance_token": token, **body})
        assert reply["code"] == "SUCCESS", reply


class HookedBroker(Broker):
    """A real broker with a hook run before each wave's fence check (as a slow link would delay it)."""

    before_wave: Callable[[int], Awaitable[None]] | None = None

    async def publish_waves(
        self,
        notifications: Sequence[Notification],
        *,
        timeout: float | None = None,
        may_continue: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        waves = 0

        async def hooked() -> bool:
            nonlocal waves
            waves += 1
            if self.before_wave is not None:
                await self.before_wave(waves)
            return True if may_continue is None else await may_continue()

        await super().publish_waves(notifications, timeout=timeout, may_continue=hooked)


@contextlib.asynccontextmanager
async def relay_running(
    cluster: Cluster, *, fence: float, metrics: Metrics | None = None, before_wave: Any = None
) -> AsyncIterator[OutboxRelay]:
    store = await Store.open(cluster.env["STATUSEK_DATABASE_URL"])
    broker = HookedBroker(cluster.env["STATUSEK_AMQP_URL"], Names(partitions=command_partitions()))
    broker.before_wave = before_wave
    await broker.open()
    relay = OutboxRelay(
        store, broker, batch=100, poll=0.05, retry_cap=0.5, grace=1.0, fence=fence, metrics=metrics
    )
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        relay.close()
        await broker.close()
        await store.close()


async def test_a_full_subscriber_queue_costs_the_healthy_ones_a_few_copies_only(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """A queue refusing publishes gets its notifications re-sent alone, with a growing delay."""
    tokens = [str(uuid.uuid4()) for _ in range(3)]
    healthy = Subscriber()
    metrics = Metrics()
    async with (
        subscribed(cluster) as (channel, queue),
        subscribed(cluster, **{"x-max-length": 1, "x-overflow": "reject-publish"}) as (full_channel, full),
    ):
        await full_channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=full)  # now full
        await consume(channel, queue, healthy)
        for token in tokens:
            await write_rows(cluster_db, token, [1, 2, 3])
        async with relay_running(cluster, fence=0.2, metrics=metrics):
            await asyncio.sleep(10)
        nacked = metrics.registry.get_sample_value("statusek_notifications_nacked_total", {"path": "relay"})
    copies = healthy.copies()
    # The first notification of each instance, refused: sent at 0 and 4 s (next at 12).
    assert {key: n for key, n in copies.items() if key[1] == 1} == {(t, 1): 2 for t in tokens}
    # The later ones wait behind it (the full queue must not get them first): not sent at all.
    assert set(copies) == {(t, 1) for t in tokens}
    assert nacked == 6
    assert await cluster_db.fetchval("SELECT count(*) FROM outbox") == 9


async def test_a_relay_whose_session_ends_mid_publish_never_sends_after_its_successor(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """A relay's session ends while it awaits confirms: another takes over, no seq goes backwards."""
    token = str(uuid.uuid4())
    subscriber = Subscriber()
    first: OutboxRelay | None = None
    terminated = asyncio.Event()

    async def slow_link(wave: int) -> None:
        # Each wave's confirms take a while; the session dies under the relay after its first.
        if wave == 2 and not terminated.is_set():
            assert first is not None and first.session_pid is not None
            await cluster_db.execute("SELECT pg_terminate_backend($1)", first.session_pid)
            terminated.set()
        await asyncio.sleep(0.3)

    async with subscribed(cluster) as (channel, queue):
        await consume(channel, queue, subscriber)
        await write_rows(cluster_db, token, [1, 2, 3, 4, 5, 6])
        async with relay_running(cluster, fence=1.0, before_wave=slow_link) as relay:
            first = relay
            await asyncio.wait_for(terminated.wait(), 10)
            async with relay_running(cluster, fence=1.0):
                deadline = time.monotonic() + 15
                while await cluster_db.fetchval("SELECT count(*) FROM outbox"):
                    assert time.monotonic() < deadline, "the outbox was never emptied"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
    assert subscriber.backwards() == []
    assert sorted(set(subscriber.seen)) == [(token, s) for s in range(1, 7)]


async def test_through_a_worker_a_full_subscriber_queue_costs_the_healthy_ones_a_few_copies(
    cluster: Cluster,
) -> None:
    """Through a worker, one queue refusing notifications: at most 3 copies in 10 s on a healthy queue."""
    cluster.start(1, STATUSEK_LOG_LEVEL="WARNING")
    await cluster.wait_for_consumers(1)
    token = str(uuid.uuid4())
    healthy = Subscriber()
    async with (
        subscribed(cluster) as (channel, queue),
        subscribed(cluster, **{"x-max-length": 1, "x-overflow": "reject-publish"}) as (full_channel, full),
    ):
        await full_channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=full)
        await consume(channel, queue, healthy)
        await run_a_line(cluster, token)
        await asyncio.sleep(10)
    copies = healthy.copies()
    # Refused when published directly (0 s), by the relay after its grace (2 s), again at 6 s.
    assert 1 <= copies.get((token, 2), 0) <= 3, healthy.seen
    # FINISHED and instance-finished wait behind the refused STARTED, on every queue.
    assert set(copies) == {(token, 2)}, healthy.seen


async def test_through_a_worker_a_confirmed_notification_is_not_sent_again_beside_a_refused_one(
    cluster: Cluster,
) -> None:
    """A window's confirmed notification stays sent when the next one of its instance is refused."""
    cluster.start(1, STATUSEK_LOG_LEVEL="WARNING")
    await cluster.wait_for_consumers(1)
    token = str(uuid.uuid4())
    healthy = Subscriber()
    # Room for STARTED and FINISHED's status-changed: the instance-finished after them is refused.
    async with (
        subscribed(cluster) as (channel, queue),
        subscribed(cluster, **{"x-max-length": 2, "x-overflow": "reject-publish"}),
    ):
        await consume(channel, queue, healthy)
        await run_a_line(cluster, token)
        await asyncio.sleep(4)
    copies = healthy.copies()
    assert copies[(token, 3)] == 1, healthy.seen
    assert copies[(token, 4)] >= 2, healthy.seen
    assert healthy.backwards() == []
