"""Two windows of the same partition never apply at once: the second waits for the first's commit.

A replica whose window outlives its channel (a hand-over that timed out, a lost
connection) still commits it, while the broker has already given the same
commands to the next consumer in line. Here two pipelines get copies of the
same commands from two queues of their own, the first holding its transaction
open (fault hook `stall-before-commit`), as a starved replica would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import Store
from statusek.adapters.rabbitmq.broker import Broker, Consumer, Names
from statusek.core.decide import Policy
from statusek.worker.faults import FAULT_HEADER, STALL_SECONDS
from statusek.worker.pipeline import CommandPipeline
from tests.helpers import command_partitions, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(database_url: str, models_path: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url)
    models, errors = load_models(Path(p) for p in models_path.split(":"))
    assert not errors
    await store.sync_models(models)
    yield store
    await store.close()


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url, Names(partitions=command_partitions()))
    await broker.open()
    yield broker
    await broker.close()


@dataclass
class Copies:
    """Two queues of this test behind an exchange of its own: every command lands in both."""

    exchange: aio_pika.abc.AbstractExchange
    first: str
    second: str

    async def publish(self, routing_key: str, message_id: str, body: dict[str, Any], **headers: str) -> None:
        message = aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            message_id=message_id,
            headers=dict[str, Any](headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.exchange.publish(message, routing_key=routing_key)


@pytest.fixture
async def copies(amqp_url: str) -> AsyncIterator[Copies]:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    prefix = f"test.fence.{uuid.uuid4().hex[:8]}"
    exchange = await channel.declare_exchange(prefix, aio_pika.ExchangeType.FANOUT, auto_delete=True)
    names = (f"{prefix}.first", f"{prefix}.second")
    for name in names:
        queue = await channel.declare_queue(name, durable=False)
        await queue.bind(exchange)
    yield Copies(exchange, *names)
    for name in names:
        with contextlib.suppress(Exception):
            await channel.queue_delete(name)
    await connection.close()


def pipeline(store: Store, broker: Broker, *, stalls: bool) -> CommandPipeline:
    return CommandPipeline(
        store,
        broker,
        window=16,
        max_body_bytes=64 * 1024,
        policy=Policy(),
        retry_cap=0.5,
        fault_hooks=stalls,
        partition=0,
    )


async def run_both(broker: Broker, first: CommandPipeline, second: CommandPipeline, copies: Copies) -> None:
    """The first pipeline takes its copies, the second a moment later, while the first still stalls."""
    consumers: list[Consumer] = []
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        consumers.append(await broker.consume(copies.first, 16, first.on_message))
        await asyncio.sleep(STALL_SECONDS / 3)
        consumers.append(await broker.consume(copies.second, 16, second.on_message))
        await eventually(lambda: first.applied > 0, timeout=STALL_SECONDS + 10)
        # The second window waited at most for that commit; its effect, if any, shows by now.
        await asyncio.sleep(1.0)
    finally:
        for p in (first, second):
            p.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for consumer in consumers:
            await consumer.close()


async def test_a_create_redelivered_during_a_stalled_commit_creates_one_instance(
    store: Store, broker: Broker, copies: Copies, db: asyncpg.Connection
) -> None:
    """A create without a client token, applied by two windows at once, still makes one instance."""
    label = uuid.uuid4().hex
    await copies.publish(
        "create",
        f"fence-create-{label}",
        {"object_name": "2-POINT LINE TASK", "labels": {"fence": label}},
        **{FAULT_HEADER: "stall-before-commit"},
    )
    first, second = pipeline(store, broker, stalls=True), pipeline(store, broker, stalls=False)
    await run_both(broker, first, second, copies)
    instances = await db.fetchval("SELECT count(*) FROM instances WHERE labels->>'fence' = $1", label)
    assert (instances, first.applied, second.applied) == (1, 1, 0)
