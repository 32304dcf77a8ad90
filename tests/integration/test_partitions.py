"""Commands spread over several partitions: routing, parallel replicas, hand-over without loss."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid
from typing import Any

import asyncpg
import pytest

from statusek.adapters.rabbitmq.broker import Broker, Names, PartitionerMissing
from tests.integration.conftest import Cluster
from tests.integration.faults import Ledger, Report

pytestmark = pytest.mark.slow

PARTITIONS = 4
QUEUES = Names(partitions=PARTITIONS).command_queues


async def declare(cluster: Cluster, partitions: int) -> None:
    broker = await Broker.connect(cluster.env["STATUSEK_AMQP_URL"], Names(partitions=partitions))
    try:
        await broker.declare()
    finally:
        await broker.close()


async def ready(cluster: Cluster) -> dict[str, int]:
    """Ready messages per partition, from passive declarations (list_queues lags for quorum queues)."""
    channel = await cluster.wire.connection.channel()
    try:
        return {
            q: int((await channel.declare_queue(q, passive=True)).declaration_result.message_count or 0)
            for q in QUEUES
        }
    finally:
        await channel.close()


async def publish(cluster: Cluster, count: int, *, header: bool) -> None:
    for _ in range(count):
        body = {"instance_token": str(uuid.uuid4()), "status_name": "STARTED"}
        extra: dict[str, Any] = {} if header else {"headers": {}}
        await cluster.wire.send("set-status", body, reply=False, **extra)


async def test_the_instance_token_header_spreads_commands_over_every_partition(cluster: Cluster) -> None:
    """400 commands with the header land in all four partition queues, none twice."""
    await declare(cluster, PARTITIONS)
    await publish(cluster, 400, header=True)
    depths = await ready(cluster)
    assert sum(depths.values()) == 400
    assert all(n > 40 for n in depths.values()), depths


async def test_commands_without_the_header_all_go_to_one_partition(cluster: Cluster) -> None:
    """Commands published with a routing key and a body only all wait in the same partition."""
    await declare(cluster, PARTITIONS)
    await publish(cluster, 20, header=False)
    assert sorted((await ready(cluster)).values()) == [0, 0, 0, 20]


async def test_going_back_to_one_partition_routes_to_the_one_queue_only(cluster: Cluster) -> None:
    """After four partitions then one, a command with the header reaches statusek.commands once."""
    await declare(cluster, PARTITIONS)
    await declare(cluster, 1)
    await publish(cluster, 10, header=True)
    assert await ready(cluster) == {QUEUES[0]: 10, **{q: 0 for q in QUEUES[1:]}}


async def test_a_broker_without_the_partitioner_type_is_named_with_the_plugin(cluster: Cluster) -> None:
    """An exchange type the broker lacks ends the declaration with the plugin to enable."""
    broker = await Broker.connect(cluster.env["STATUSEK_AMQP_URL"], Names(partitions=PARTITIONS))
    broker.partitioner_type = "x-no-such-type"
    try:
        with pytest.raises(
            PartitionerMissing, match="rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"
        ):
            await broker.declare()
    finally:
        await broker.close()


async def shares_known(cluster: Cluster, members: int, timeout: float = 20) -> None:
    """Until every replica has logged its share among `members` (then it has stepped back from the rest)."""
    deadline = time.monotonic() + timeout
    while True:
        last: dict[object, object] = {}
        for line in cluster.log_lines():
            if line.get("event") == "partition share":
                last[line.get("pid")] = line.get("members")
        if len(last) >= members and all(m == members for m in last.values()):
            return
        assert time.monotonic() < deadline, f"shares after {timeout} s: {last}"
        await asyncio.sleep(0.1)


async def test_replicas_apply_partitions_in_parallel_and_keep_order(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """Two replicas on four partitions both apply commands; 300 instances end gapless, in order."""
    cluster.start(2, STATUSEK_COMMAND_PARTITIONS=str(PARTITIONS), STATUSEK_LOG_LEVEL="INFO")
    await cluster.wait_for_consumers(2)
    await shares_known(cluster, members=2)
    ledger = Ledger(cluster.wire, Report(f"{PARTITIONS} partitions, 2 replicas"))
    await ledger.run(300)
    await ledger.wait_replies(timeout=60)
    report = await ledger.audit(cluster_db)
    appliers = collections.Counter(
        line.get("pid") for line in cluster.log_lines() if line.get("event") == "command"
    )
    report.extra.update(commands_by_replica=sorted(appliers.values()))
    assert (report.applied, report.duplicated, report.lost) == (1200, 0, 0)
    assert "unexpected_logs" not in report.extra
    assert len(appliers) == 2 and min(appliers.values()) > 100, appliers


async def test_replicas_joining_and_leaving_under_load_lose_and_reorder_nothing(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """Replicas join, then the first leaves (SIGTERM) under load: every command once, in order."""
    env = {
        "STATUSEK_COMMAND_PARTITIONS": str(PARTITIONS),
        "STATUSEK_LOG_LEVEL": "INFO",
        "STATUSEK_REBALANCE_EVERY": "0.5",
    }
    first = cluster.start(1, **env)[0]
    await cluster.wait_for_consumers(1)
    ledger = Ledger(cluster.wire, Report("partitions: replicas join and leave under load"))
    loading = asyncio.create_task(ledger.run(600, per_second=400))
    await asyncio.sleep(1.5)
    cluster.start(1, **env)
    await asyncio.sleep(1.5)
    cluster.start(1, **env)
    await asyncio.sleep(1.5)
    first.send_signal(signal.SIGTERM)
    await loading
    await ledger.wait_replies(timeout=90)
    report = await ledger.audit(cluster_db)
    lines = cluster.log_lines()
    handovers = sum(1 for line in lines if line.get("event") == "handing a partition over to its owner")
    appliers = collections.Counter(line.get("pid") for line in lines if line.get("event") == "command")
    report.extra.update(handovers=handovers, commands_by_replica=sorted(appliers.values()))
    assert await asyncio.to_thread(first.wait, 20) == 0
    assert (report.applied, report.duplicated, report.lost) == (2400, 0, 0)
    assert "unexpected_logs" not in report.extra
    assert report.notifications_missing == 0
    assert handovers > 0 and len(appliers) == 3


async def test_headerless_and_headered_commands_of_one_instance_keep_time_in_seq_order(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """Pings of one instance through two partitions at once: occurred_at never runs back with seq."""
    cluster.start(2, STATUSEK_COMMAND_PARTITIONS=str(PARTITIONS))
    await cluster.wait_for_consumers(2)
    await shares_known(cluster, members=2)
    # Few instances, many commands each: windows of both partitions queue on the same row locks.
    tokens = [str(uuid.uuid4()) for _ in range(4)]
    for token in tokens:
        await cluster.wire.send(
            "create", {"object_name": "2-POINT LINE TASK", "instance_token": token}, reply=False
        )
    for round_ in range(150):
        for token in tokens:
            # Without the header a command goes to partition 0; with it, to its instance's partition.
            extra: dict[str, Any] = {} if round_ % 2 else {"headers": {}}
            await cluster.wire.send("ping", {"instance_token": token}, reply=False, **extra)
    wanted = [uuid.UUID(t) for t in tokens]
    deadline = time.monotonic() + 60
    while (
        await cluster_db.fetchval(
            "SELECT count(*) FROM events WHERE instance_token = ANY($1::uuid[])", wanted
        )
        < len(tokens) * 7
    ):
        assert time.monotonic() < deadline, "not every ping was applied within 60 s"
        await asyncio.sleep(0.2)
    backwards = await cluster_db.fetchval(
        "SELECT count(*) FROM (SELECT occurred_at < lag(occurred_at) OVER w AS back FROM events"
        " WHERE instance_token = ANY($1::uuid[]) WINDOW w AS (PARTITION BY instance_token ORDER BY seq)) e"
        " WHERE back",
        wanted,
    )
    assert backwards == 0
