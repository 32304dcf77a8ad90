"""Notifications published by the pipeline that commits them, and the relay as their safety net."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import GENERIC_PLANS, Store
from statusek.adapters.rabbitmq.broker import Broker, Names
from statusek.core.decide import Policy
from statusek.core.errors import BrokerUnavailable
from statusek.worker.faults import FAULT_HEADER
from statusek.worker.metrics import Metrics
from statusek.worker.pipeline import CommandPipeline
from statusek.worker.relay import OutboxRelay
from tests.helpers import command_partitions, eventually
from tests.integration.conftest import Cluster

STARTED = {"status_name": "STARTED"}
FINISHED = {"status_name": "FINISHED"}


class FlakyBroker(Broker):
    """A broker whose next `fail` publishings of notifications fail, as a broker outage would."""

    fail = 0

    async def publish_notifications(self, notifications: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("rabbitmq unavailable: test")
        await super().publish_notifications(notifications)


@dataclass
class InProcess:
    """A command pipeline of this process on the cluster's vhost and database, and no relay."""

    store: Store
    broker: FlakyBroker
    pipeline: CommandPipeline
    relay_wakes: list[float]
    metrics: Metrics


@pytest.fixture
async def in_process(
    cluster: Cluster, models_path: str, request: pytest.FixtureRequest
) -> AsyncIterator[InProcess]:
    # A test may ask for a pool of one connection (indirect parameter): then every statement
    # the pipeline sends goes through the connection it watches.
    pool_size = getattr(request, "param", 10)
    store = await Store.open(
        cluster.env["STATUSEK_DATABASE_URL"], min_size=min(2, pool_size), max_size=pool_size
    )
    broker = FlakyBroker(cluster.env["STATUSEK_AMQP_URL"], Names(partitions=command_partitions()))
    wakes: list[float] = []
    metrics = Metrics()
    try:
        models, errors = load_models(Path(p) for p in models_path.split(":"))
        assert not errors
        await store.sync_models(models)
        await broker.open()
        pipeline = CommandPipeline(
            store,
            broker,
            window=256,
            max_body_bytes=64 * 1024,
            policy=Policy(),
            retry_cap=1.0,
            on_committed=lambda: wakes.append(time.monotonic()),
            metrics=metrics,
        )
        # One pipeline for every partition: enough for these tests, which watch one instance at a time.
        consumers = [await broker.consume(q, 64, pipeline.on_message) for q in broker.names.command_queues]
        running = asyncio.create_task(pipeline.run())
        try:
            yield InProcess(store, broker, pipeline, wakes, metrics)
        finally:
            pipeline.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 10)
            for consumer in consumers:
                await consumer.close()
    finally:
        await broker.close()
        await store.close()


async def command(
    cluster: Cluster, token: str, routing_key: str, body: dict[str, Any], **headers: str
) -> None:
    reply = await cluster.wire.request(routing_key, {"instance_token": token, **body}, headers=headers)
    assert reply["code"] == "SUCCESS", reply


async def create(cluster: Cluster) -> str:
    token = str(uuid.uuid4())
    await command(cluster, token, "create", {"object_name": "2-POINT LINE TASK"})
    return token


async def outbox_empty(db: asyncpg.Connection, timeout: float = 5) -> None:
    """Wait until the outbox holds nothing (a pipeline deletes its rows just after the confirms)."""
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT count(*) FROM outbox"):
        assert time.monotonic() < deadline, "rows left in the outbox"
        await asyncio.sleep(0.02)


def kinds(messages: list[Any]) -> list[str]:
    return [f"{m.type}:{m.message_id}" for m in messages]


def expected(token: str) -> list[str]:
    """STARTED's and FINISHED's status-changed (seq 2, 3), then instance-finished (seq 4)."""
    return [f"status-changed:{token}:2", f"status-changed:{token}:3", f"instance-finished:{token}:4"]


async def test_the_applying_pipeline_publishes_its_notifications(
    cluster: Cluster, cluster_db: asyncpg.Connection, in_process: InProcess
) -> None:
    """With no relay at all, a window's notifications arrive in order and leave the outbox."""
    token = await create(cluster)
    await command(cluster, token, "set-status", STARTED)
    await command(cluster, token, "set-status", FINISHED)
    received = await cluster.wire.wait_notifications(token, 3, timeout=5)
    assert kinds(received) == expected(token)
    await outbox_empty(cluster_db)
    assert in_process.relay_wakes == []
    direct = {"path": "direct"}
    assert in_process.metrics.registry.get_sample_value("statusek_notifications_published_total", direct) == 3


@pytest.mark.parametrize("in_process", [1], indirect=True)
async def test_a_window_of_one_command_costs_four_round_trips_to_postgres(
    cluster: Cluster, in_process: InProcess
) -> None:
    """BEGIN with the fence, the lock, the save, COMMIT: one statement each, and nothing else."""
    token = await create(cluster)
    await asyncio.sleep(0.3)  # past the idle delete of the create's published rows
    queries: list[str] = []
    async with in_process.store.connection() as conn:
        conn.add_query_logger(lambda record: queries.append(record.query))
    await command(cluster, token, "set-status", STARTED)
    # Read at once: the idle delete of this window's rows comes 50 ms after its reply.
    # From the window's BEGIN: the connection's release by this test is logged before it.
    begins = [i for i, q in enumerate(queries) if q.startswith("BEGIN")]
    commits = [i for i, q in enumerate(queries) if q.endswith("COMMIT")]
    assert begins and commits, queries
    window = queries[begins[0] : commits[0] + 1]
    assert len(window) == 4, window
    assert window[0].startswith(f"BEGIN; {GENERIC_PLANS}; SELECT pg_advisory_xact_lock("), window[0]


@pytest.mark.parametrize("in_process", [1], indirect=True)
async def test_windows_of_one_command_are_not_planned_again_and_again(
    cluster: Cluster, in_process: InProcess
) -> None:
    """A window's lock and save statements run on one generic plan, not a new plan per window."""
    for _ in range(4):
        await command(cluster, await create(cluster), "set-status", STARTED)
    async with in_process.store.connection() as conn:
        plans = await conn.fetch(
            "SELECT split_part(statement, ' ', 2) AS cte, generic_plans, custom_plans"
            " FROM pg_prepared_statements WHERE statement LIKE 'WITH %'"
        )
    by_cte = {r["cte"]: (r["generic_plans"], r["custom_plans"]) for r in plans}
    # Eight windows: Postgres plans each of the first five anew on its own, and every one after
    # too while the custom plan is costed below the generic one.
    assert by_cte["instances_written"] == (8, 0), by_cte
    assert by_cte["locked"] == (8, 0), by_cte


async def test_a_failed_direct_publish_goes_to_the_relay_before_later_notifications(
    cluster: Cluster, cluster_db: asyncpg.Connection, in_process: InProcess
) -> None:
    """After a failed publish, the instance's next window waits in the outbox too; the relay sends both."""
    token = await create(cluster)
    in_process.broker.fail = 1
    await command(cluster, token, "set-status", STARTED)
    await eventually(lambda: len(in_process.relay_wakes) == 1)  # the reply may come first
    await command(cluster, token, "set-status", FINISHED)
    await eventually(lambda: len(in_process.relay_wakes) == 2)
    rows = await cluster_db.fetch("SELECT message_id, direct FROM outbox ORDER BY id")
    assert [(r["message_id"], r["direct"]) for r in rows] == [
        (m.split(":", 1)[1], False) for m in expected(token)
    ]
    assert cluster.wire.notifications[token] == []
    relay = OutboxRelay(in_process.store, in_process.broker, batch=100, poll=60, retry_cap=1.0)
    assert await relay.flush()
    received = await cluster.wire.wait_notifications(token, 3, timeout=5)
    assert kinds(received) == expected(token)
    assert await cluster_db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_young_direct_row_holds_its_instance_but_not_the_others(
    cluster: Cluster, cluster_db: asyncpg.Connection, in_process: InProcess
) -> None:
    """The relay leaves an in-flight row and its instance's later rows, and sends another instance's."""
    held, other = await create(cluster), await create(cluster)
    rows: list[int] = []
    for token, direct in ((held, True), (held, False), (other, False)):
        rows.append(
            await cluster_db.fetchval(
                "INSERT INTO outbox (message_id, type, instance_token, body, headers, partition, direct)"
                " VALUES ($1, 'status-changed', $2, $3::jsonb, '{}', 0, $4) RETURNING id",
                f"{token}:{len(rows) + 10}",
                uuid.UUID(token),
                json.dumps({"instance_token": token}),
                direct,
            )
        )
    relay = OutboxRelay(in_process.store, in_process.broker, batch=1, poll=60, retry_cap=1.0, grace=60)
    assert await relay.flush()
    await cluster.wire.wait_notifications(other, 1, timeout=5)
    assert [r["id"] for r in await cluster_db.fetch("SELECT id FROM outbox ORDER BY id")] == rows[:2]
    assert cluster.wire.notifications[held] == []


@pytest.mark.slow
async def test_a_crash_before_publishing_is_published_by_the_relay_after_the_grace(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """A worker dies between commit and publish: the relay sends it once, after the grace, before the next."""
    hooks = {"STATUSEK_FAULT_HOOKS": "true", "STATUSEK_LOG_LEVEL": "WARNING"}
    cluster.start(2, **hooks)
    await cluster.wait_for_consumers(2)
    # Its worker dies after commit; the standby takes the redelivery and answers from the record.
    token = await create(cluster)
    sent = time.monotonic()
    await command(cluster, token, "set-status", STARTED, **{FAULT_HEADER: "crash-before-publish"})
    assert sum(1 for p in cluster.workers if p.poll() == 70) == 1
    await command(cluster, token, "set-status", FINISHED)
    received = await cluster.wire.wait_notifications(token, 3, timeout=15)
    arrived = time.monotonic()
    await asyncio.sleep(0.5)  # nothing more comes (no second copy)
    assert kinds(cluster.wire.notifications[token]) == expected(token)
    assert arrived - sent >= 1.5, "the relay did not wait for the grace"
    assert received[0].message_id == f"{token}:2"
    await outbox_empty(cluster_db)
