"""Timeouts, heartbeats and cancel: every open instance finishes, exactly once."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta

import asyncpg
import pytest

from tests.helpers import create
from tests.integration.conftest import Cluster
from tests.integration.faults import REPORTS, Report
from tests.integration.wire import Wire


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_timeout_finishes_within_three_seconds_of_deadline(wire: Wire) -> None:
    """An instance with a 2 s timeout is announced finished with TIMEOUT soon after."""
    t = await create(wire, instance_timeout=2)
    deadline = parse_time(
        (await wire.query("get-instance", {"instance_token": t}))["data"]["instance_deadline"]
    )
    finished = await wire.finished(t, timeout=10)
    received = datetime.now(deadline.tzinfo)
    body = json.loads(finished.body)
    assert body["reason"] == "TIMEOUT"
    assert parse_time(body["finished_at"]) == deadline
    assert received - deadline < timedelta(seconds=3)


async def test_pinged_instance_stays_open_then_misses_its_heartbeat(wire: Wire) -> None:
    """Pings every 0.5 s keep a 1 s heartbeat open for 5 s; silence then finishes it."""
    t = await create(wire, heartbeat_timeout=1, instance_timeout=60)
    started = time.monotonic()
    while time.monotonic() - started < 5:
        reply = await wire.request("ping", {"instance_token": t, "message": "still here"})
        assert reply["code"] == "SUCCESS"
        await asyncio.sleep(0.5)
    last_ping = datetime.now().astimezone()
    assert (await wire.query("is-finished", {"instance_token": t}))["data"]["instance_is_finished"] is False
    finished = await wire.finished(t, timeout=5)
    assert json.loads(finished.body)["reason"] == "HEARTBEAT_TIMEOUT"
    assert datetime.now().astimezone() - last_ping < timedelta(seconds=2)


async def test_status_and_ping_after_finish_are_refused(wire: Wire) -> None:
    """A timed-out instance answers INSTANCE_IS_FINISHED to set-status, ping and cancel."""
    t = await create(wire, instance_timeout=0.5)
    await wire.finished(t, timeout=5)
    for routing_key, body in (
        ("set-status", {"instance_token": t, "status_name": "STARTED"}),
        ("ping", {"instance_token": t}),
        ("cancel", {"instance_token": t}),
    ):
        assert (await wire.request(routing_key, body))["code"] == "INSTANCE_IS_FINISHED"


async def test_query_sees_an_overdue_instance_finished(wire: Wire, db: asyncpg.Connection) -> None:
    """is-finished reports TIMEOUT for an overdue instance whatever the sweeper did."""
    t = await create(wire, instance_timeout=0.2)
    await asyncio.sleep(0.3)
    data = (await wire.query("is-finished", {"instance_token": t}))["data"]
    assert data == {"instance_is_finished": True, "instance_is_finished_description": "TIMEOUT"}


async def test_two_thousand_deadlines_in_one_second_with_three_workers(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """Every instance gets exactly one finish event and one notification, within 5 s."""
    cluster.start(3)
    await cluster.wait_for_consumers(3)
    wire, db = cluster.wire, cluster_db
    # Time to publish 2,000 confirmed creates one at a time on a busy machine (over 15 s once, when other
    # test runs loaded it). One at a time keeps each create applied just after it is sent, so
    # that their deadlines stay within a second of `target`.
    target = time.time() + 25
    tokens = [str(uuid.uuid4()) for _ in range(2000)]
    ids = [
        await wire.send(
            "create",
            {
                "object_name": "2-POINT LINE TASK",
                "instance_token": t,
                "instance_timeout": round(target - time.time(), 3),
            },
        )
        for t in tokens
    ]
    for c in ids:
        assert (await wire.reply(c, timeout=30))["code"] == "SUCCESS"
    uuids = [uuid.UUID(t) for t in tokens]
    spread = await db.fetchrow(
        "SELECT min(instance_deadline) AS first, max(instance_deadline) AS last"
        " FROM instances WHERE token = ANY($1)",
        uuids,
    )
    assert spread["last"] - spread["first"] < timedelta(seconds=1), spread

    for t in tokens:
        await wire.finished(t, timeout=30)
    received_all = datetime.now().astimezone()
    report = Report("2,000 deadlines in one second, three workers")
    report.extra.update(
        deadline_spread_s=round((spread["last"] - spread["first"]).total_seconds(), 3),
        all_notified_after_last_deadline_s=round((received_all - spread["last"]).total_seconds(), 3),
    )
    REPORTS.append(report)
    assert received_all - spread["last"] < timedelta(seconds=5)

    per_instance = await db.fetch(
        "SELECT instance_token, count(*) AS n FROM events"
        " WHERE kind = 'finished' AND instance_token = ANY($1) GROUP BY instance_token",
        uuids,
    )
    assert len(per_instance) == 2000 and all(r["n"] == 1 for r in per_instance)
    await asyncio.sleep(1)  # a duplicate, if any, would arrive by now
    finished_counts = Counter(
        m.message_id for t in tokens for m in wire.notifications[t] if m.type == "instance-finished"
    )
    report.extra.update(
        finish_events=sum(r["n"] for r in per_instance), finish_notifications=sum(finished_counts.values())
    )
    assert len(finished_counts) == 2000 and set(finished_counts.values()) == {1}


@pytest.mark.parametrize("round_", range(3))
async def test_pings_racing_the_deadline_never_both_extend_and_finish(
    wire: Wire, db: asyncpg.Connection, round_: int
) -> None:
    """A ping at the heartbeat deadline either extends it or is refused, never both."""
    instances = [str(uuid.uuid4()) for _ in range(100)]

    async def ping_at_deadline(t: str) -> list[str]:
        await create(wire, instance_token=t, heartbeat_timeout=0.5, instance_timeout=60)
        info = (await wire.query("get-instance", {"instance_token": t}))["data"]
        # On a loaded machine the query may come after the 0.5 s: the instance is finished
        # then and shows no deadline, so aim at the one it had (the ping is then refused).
        created = parse_time(info["created_at"]).timestamp()
        deadline = (
            parse_time(info["heartbeat_deadline"]).timestamp()
            if info["heartbeat_deadline"]
            else created + info["heartbeat_timeout"]
        )
        outcomes = []
        for _ in range(4):
            # Same host, same clock as the database: aim at the deadline itself.
            await asyncio.sleep(max(0.0, deadline + random.uniform(-0.08, 0.0) - time.time()))
            reply = await wire.request("ping", {"instance_token": t})
            outcomes.append(reply["code"])
            if reply["code"] != "SUCCESS":
                break
            deadline = parse_time(reply["data"]["deadline"]).timestamp()
        return outcomes

    results = await asyncio.gather(*(ping_at_deadline(t) for t in instances))
    codes = Counter(code for outcomes in results for code in outcomes)
    REPORTS.append(Report(f"pings racing the deadline, round {round_ + 1}", extra=dict(codes)))
    assert set(codes) <= {"SUCCESS", "INSTANCE_IS_FINISHED"}
    for t in instances:
        await wire.finished(t, timeout=10)

    rows = await db.fetch(
        "SELECT instance_token, array_agg(kind ORDER BY seq) AS kinds,"
        " array_agg(occurred_at ORDER BY seq) AS at FROM events WHERE instance_token = ANY($1) GROUP BY 1",
        [uuid.UUID(t) for t in instances],
    )
    by_token = {str(r["instance_token"]): r for r in rows}
    for t, outcomes in zip(instances, results, strict=True):
        kinds = list(by_token[t]["kinds"])
        at = list(by_token[t]["at"])
        # The log: created, then the accepted pings, then exactly one finish, nothing after.
        accepted = outcomes.count("SUCCESS")
        assert kinds == ["created"] + ["ping"] * accepted + ["finished"], (t, kinds, outcomes)
        # The finish is dated at the heartbeat deadline of the last activity, after it.
        assert at[-1] - at[-2] == timedelta(seconds=0.5)
