"""Queries never wedge, and what they say is true under concurrent commits (issue 17, items 4 and 7).

The race tests hold an instance's row lock in a transaction of their own, as a command window
does between locking its instances and committing, and write what that window would write.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from statusek.adapters.postgres import reports
from statusek.adapters.postgres.retention import TIMELINE_COLUMNS, add_daily, timelines
from statusek.core.codes import FinishReason
from statusek.core.messages import MAX_REPORT_DAYS, MAX_TEXT
from statusek.core.report import Timeline, build_report, fold
from statusek.testing import Services
from statusek.worker import queries
from tests.helpers import TASK, broker_max_message_size, create
from tests.integration.conftest import Cluster
from tests.integration.wire import Wire


async def _dead_letter_reason(wire: Wire, message_id: str) -> object:
    parked = await wire.parked("statusek.dead-letter", message_id)
    return (parked.headers or {}).get("x-statusek-reason")


async def test_report_until_the_last_date_is_answered_and_wedges_nothing(wire: Wire) -> None:
    """70 get-report until 9999-12-31 (more than the prefetch) are all answered; queries go on."""
    t = await create(wire)
    replies = await asyncio.gather(
        *(wire.query("get-report", {"object_name": TASK, "until": "9999-12-31"}) for _ in range(70))
    )
    assert {r["code"] for r in replies} == {"SUCCESS"}
    finished = await wire.query("is-finished", {"instance_token": t})
    assert finished["data"]["instance_is_finished"] is False


async def test_report_range_is_bounded_and_the_error_names_until(wire: Wire) -> None:
    """A since..until range of more than MAX_REPORT_DAYS days is INVALID_MESSAGE naming until."""
    since = datetime(2020, 1, 1).date()
    too_far = since + timedelta(days=MAX_REPORT_DAYS)
    reply = await wire.query(
        "get-report", {"object_name": TASK, "since": since.isoformat(), "until": too_far.isoformat()}
    )
    assert (reply["code"], reply["data"]["reason"]) == ("INVALID_MESSAGE", "schema-violation")
    assert "until" in reply["message"]
    just = since + timedelta(days=MAX_REPORT_DAYS - 1)
    ok = await wire.query(
        "get-report", {"object_name": TASK, "since": since.isoformat(), "until": just.isoformat()}
    )
    assert ok["code"] == "SUCCESS"


async def test_report_added_up_in_sql_beside_daily_aggregates_matches_the_reference(
    wire: Wire, db: asyncpg.Connection
) -> None:
    """get-report's SQL figures, histograms merged with a purged day's, equal core.report's own."""
    for i in range(12):
        t = await create(wire)
        await wire.request("set-status", {"instance_token": t, "status_name": "STARTED"})
        await asyncio.sleep(0.01 * (i % 4))
        await wire.request("set-status", {"instance_token": t, "status_name": "FINISHED"})
    version = await db.fetchval("SELECT max(version) FROM model_versions WHERE object_name = $1", TASK)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    purged = [
        Timeline(
            TASK,
            version,
            start,
            start + timedelta(seconds=0.002 * n + 3),
            FinishReason.ALL_MANDATORY_STATUSES_ARE_SET,
            (("STARTED", start + timedelta(seconds=0.002 * n)), ("FINISHED", start + timedelta(seconds=3))),
        )
        for n in range(1, 20)
    ]
    rows = await db.fetch(
        f"SELECT {TIMELINE_COLUMNS}, e.status_name, e.occurred_at FROM instances i"
        " LEFT JOIN events e ON e.instance_token = i.token AND e.kind = 'status'"
        " WHERE i.object_name = $1 AND i.finished_at IS NOT NULL ORDER BY i.token, e.seq",
        TASK,
    )
    kept = timelines(rows)
    slas = {(TASK, v): None for v in {version, *(t.model_version for t in kept)}}
    daily = fold(purged, slas)
    # A day long past, which no other test's report of this object asks for.
    await add_daily(db, daily)
    try:
        reply = await wire.query("get-report", {"object_name": TASK})
    finally:
        await db.execute("DELETE FROM report_daily WHERE object_name = $1 AND day = $2", TASK, start.date())
    want = build_report(TASK, None, None, daily, kept, slas, ["STARTED", "FINISHED"]).model_dump(mode="json")
    got = reply["data"]
    for figures in (got, want):
        for f in [figures["duration"], *figures["by_reason"], *figures["statuses"]]:
            f["mean"] = round(f["mean"], 9)
    assert got == want
    assert not got["duration"]["exact"] and got["purged"] == len(purged)


async def test_a_report_past_its_timeout_is_refused_not_retried(
    wire: Wire, holder: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A get-report whose SQL runs past REPORT_TIMEOUT answers INVALID_MESSAGE report-timeout, once."""
    monkeypatch.setattr(reports, "REPORT_TIMEOUT", 0.5)
    async with holder.transaction():
        # A statement timeout counts the time spent waiting for a lock: the report is slow for sure.
        await holder.execute("LOCK TABLE report_daily IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        reply = await wire.query("get-report", {"object_name": TASK})
        took = time.monotonic() - started
    assert (reply["code"], reply["data"]["reason"]) == ("INVALID_MESSAGE", "report-timeout")
    assert "since..until" in reply["message"]
    assert took < 5


async def test_a_failing_query_answers_internal_error_and_is_acked(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query whose handler raises gets INTERNAL_ERROR, a dead-letter copy, and the next is answered."""
    t = await create(wire)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug in a query handler")

    monkeypatch.setattr(queries, "answer", broken)
    message_id = uuid.uuid4().hex
    reply = await wire.request(
        "is-finished", {"instance_token": t}, exchange="statusek.queries", message_id=message_id
    )
    assert (reply["code"], reply["data"]["reason"]) == ("INTERNAL_ERROR", "internal-error")
    assert "ZeroDivisionError" not in reply["message"]  # our own failure stays in the copy's headers
    assert await _dead_letter_reason(wire, message_id) == "internal-error"
    monkeypatch.undo()
    finished = await wire.query("is-finished", {"instance_token": t})
    assert finished["data"]["instance_is_finished"] is False


# --- reads are snapshots ------------------------------------------------------------------------


@pytest.fixture
async def holder(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, standing in for a command window or a sweeper."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _clock(conn: asyncpg.Connection) -> datetime:
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


async def _until_past(conn: asyncpg.Connection, moment: datetime) -> None:
    """Until the database clock (the one statusek judges deadlines by) is past `moment`."""
    await asyncio.sleep(max(0.0, (moment - await _clock(conn)).total_seconds()) + 0.05)
    assert await _clock(conn) > moment


async def _until_waiting(conn: asyncpg.Connection, query: str, timeout: float = 10) -> None:
    """Until a session waits for a lock (`query`: the pg_locks condition of what it waits for)."""
    deadline = time.monotonic() + timeout
    while not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND {query})"):
        assert time.monotonic() < deadline, "the query never waited for the lock"
        await asyncio.sleep(0.02)


async def _asked_while_a_ping_is_held(
    wire: Wire, holder: asyncpg.Connection, token: uuid.UUID, routing_key: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The answer to a query asked while a window holds the instance, pinging it just before its
    heartbeat deadline and committing after it; and whether it came before that commit."""
    async with holder.transaction():
        # A window locks the instance and reads its clock before the heartbeat deadline...
        row = await holder.fetchrow(
            "SELECT heartbeat_deadline, last_seq, clock_timestamp() AS now FROM instances"
            " WHERE token = $1 FOR UPDATE",
            token,
        )
        assert row["now"] < row["heartbeat_deadline"], "the window came too late to stand for a ping"
        # ...and is slow to commit: the deadline passes meanwhile.
        await _until_past(holder, row["heartbeat_deadline"])
        asked = asyncio.ensure_future(wire.query(routing_key, body))
        done, _ = await asyncio.wait([asked], timeout=1.0)
        # The ping it applies moves the heartbeat deadline: the instance is open after all.
        moved = row["now"] + timedelta(seconds=600)
        await holder.execute(
            "UPDATE instances SET heartbeat_deadline = $2, heartbeat_timeout = 600,"
            " next_deadline = least(instance_deadline, $2), last_seq = $3 WHERE token = $1",
            token,
            moved,
            row["last_seq"] + 1,
        )
        await holder.execute(
            "INSERT INTO events (instance_token, seq, kind, occurred_at) VALUES ($1, $2, 'ping', $3)",
            token,
            row["last_seq"] + 1,
            row["now"],
        )
    return await asked, bool(done)


async def test_is_finished_waits_for_a_window_holding_an_overdue_instance(
    wire: Wire, holder: asyncpg.Connection
) -> None:
    """is-finished on an instance past its heartbeat, held by a window applying a ping, says open."""
    t = await create(wire, heartbeat_timeout=1, instance_timeout=600)
    answer, early = await _asked_while_a_ping_is_held(
        wire, holder, uuid.UUID(t), "is-finished", {"instance_token": t}
    )
    assert not early, f"answered while the window held the instance: {answer}"
    assert answer["data"] == {"instance_is_finished": False, "instance_is_finished_description": None}


async def test_find_instances_waits_for_a_window_holding_an_overdue_instance(
    wire: Wire, holder: asyncpg.Connection
) -> None:
    """find-instances lists an instance past its heartbeat, held by a window applying a ping, open."""
    label = uuid.uuid4().hex
    t = await create(wire, heartbeat_timeout=1, instance_timeout=600, labels={"race": label})
    answer, early = await _asked_while_a_ping_is_held(
        wire, holder, uuid.UUID(t), "find-instances", {"labels": {"race": label}}
    )
    found = answer["data"]["instances"]
    assert not early, f"answered while the window held the instance: {answer}"
    assert [(i["instance_token"], i["instance_is_finished"]) for i in found] == [(t, False)]


async def test_get_events_shows_a_finish_once_when_a_sweeper_commits_during_the_read(
    wire: Wire, holder: asyncpg.Connection
) -> None:
    """get-events of an overdue instance swept while the query reads lists the finish once."""
    t = await create(wire, instance_timeout=1)
    token = uuid.UUID(t)
    async with holder.transaction():
        # A sweeper that took the row first (the worker's own then skips it)...
        row = await holder.fetchrow(
            "SELECT instance_deadline, last_seq FROM instances WHERE token = $1 FOR UPDATE", token
        )
        await _until_past(holder, row["instance_deadline"])
        # ...and holds up the query between its read of the instance and its read of the events.
        await holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        asked = asyncio.ensure_future(wire.query("get-events", {"instance_token": t}))
        await _until_waiting(holder, "relation = 'events'::regclass")
        seq = row["last_seq"] + 1
        await holder.execute(
            "UPDATE instances SET finished_at = $2, finish_reason = 'TIMEOUT', next_deadline = NULL,"
            " last_seq = $3 WHERE token = $1",
            token,
            row["instance_deadline"],
            seq,
        )
        await holder.execute(
            "INSERT INTO events (instance_token, seq, kind, occurred_at, reason)"
            " VALUES ($1, $2, 'finished', $3, 'TIMEOUT')",
            token,
            seq,
            row["instance_deadline"],
        )
    events = (await asked)["data"]["events"]
    assert [e["seq"] for e in events] == list(range(1, seq + 1))
    assert [e["kind"] for e in events].count("finished") == 1


async def test_an_answer_over_the_brokers_size_limit_is_refused_in_a_reply_that_fits(
    cluster: Cluster, services: Services
) -> None:
    """An answer the broker refuses as too large is INVALID_MESSAGE (reply-too-large), not requeued."""
    marker = uuid.uuid4().hex
    # 40 KB of labels: under the worker's body limit (64 KiB), over the broker's limit set below.
    labels = {"marker": marker, **{f"k{i}": "x" * MAX_TEXT for i in range(10)}}
    # The broker applies its limit to channels opened after it is set: the worker's are.
    with broker_max_message_size(services.rabbit, 32 * 1024):
        cluster.start(1, STATUSEK_LOG_LEVEL="WARNING")
        await cluster.wait_for_consumers(1)
        created = await cluster.wire.request("create", {"object_name": TASK, "labels": labels})
        assert created["code"] == "SUCCESS", created
        reply = await cluster.wire.query("find-instances", {"labels": {"marker": marker}})
        assert (reply["code"], reply["data"].get("reason")) == ("INVALID_MESSAGE", "reply-too-large"), reply
        assert "max_message_size" in reply["message"]
        # Answered and acked: the next query is answered too.
        finished = await cluster.wire.query(
            "is-finished", {"instance_token": created["data"]["instance_token"]}
        )
        assert finished["code"] == "SUCCESS", finished
