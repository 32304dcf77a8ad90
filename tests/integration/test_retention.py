"""Retention, daily aggregates, timing reports and ping summaries against the real services.

The module runs a worker of its own on a database and vhost of its own, with models that keep
finished instances one second (SHORT LIVED) or forever (TIMED REPORT). Its purger runs once at start
and then sleeps; the tests purge when they choose with `Purger.purge_once`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from statusek.adapters.postgres.retention import PURGE_LOCK, purge_batch
from statusek.adapters.postgres.store import Store, outbox_partition
from statusek.client import Client
from statusek.core.report import RELATIVE_ERROR
from statusek.exceptions import InstanceNotFound
from statusek.settings import Settings
from statusek.testing import Services, fresh_database, fresh_vhost, running_worker
from statusek.worker.purger import Purger
from tests import helpers
from tests.integration.conftest import Database
from tests.integration.wire import Wire

pytestmark = pytest.mark.integration

RETENTION = 1.0  # seconds, of SHORT LIVED
MODELS = {
    "short-lived.yaml": f"""
object_name: SHORT LIVED
retention: {RETENTION:g}
sla: 0.25
statuses:
  - {{name: STARTED, type: MANDATORY}}
  - {{name: FINISHED, type: MANDATORY, after: [STARTED]}}
""",
    # Kept forever; EXACT REPORT is only for the test that checks every figure.
    **{
        f"{name.lower().replace(' ', '-')}.yaml": f"""
object_name: {name}
sla: 0.15
statuses:
  - {{name: STARTED, type: MANDATORY}}
  - {{name: CHECKED, type: MANDATORY, after: [STARTED]}}
  - {{name: FINISHED, type: MANDATORY, after: [CHECKED]}}
  - {{name: FAILED, type: STOP-STATUS, after: [STARTED]}}
"""
        for name in ("TIMED REPORT", "EXACT REPORT")
    },
}


@dataclass(frozen=True)
class Place:
    amqp_url: str
    database_url: str
    models_path: str


@pytest.fixture(scope="module")
async def place(
    services: Services, amqp_user_url: str, database_owner_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Place]:
    """A worker of this module's own, on a fresh database and vhost."""
    folder = tmp_path_factory.mktemp("retention-models")
    for name, text in MODELS.items():
        (folder / name).write_text(text)
    async with fresh_database(database_owner_url) as database_url:
        with fresh_vhost(amqp_user_url, admin=services.rabbit) as amqp_url:
            settings = Settings(
                amqp_url=amqp_url,
                database_url=database_url,
                models_path=str(folder),
                purge_every=3600,
                sweep_max_sleep=1.0,
                log_level="WARNING",
                ops_port=0,
            )
            async with running_worker(settings):
                yield Place(amqp_url, database_url, str(folder))


@pytest.fixture
async def client(place: Place) -> AsyncIterator[Client]:
    async with await Client.connect(place.amqp_url) as client:
        yield client


@pytest.fixture
async def store(place: Place) -> AsyncIterator[Store]:
    store = await Store.open(place.database_url)
    yield store
    await store.close()


@pytest.fixture
async def db(place: Place) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(place.database_url)
    yield conn
    await conn.close()


def purger(store: Store) -> Purger:
    return Purger(store, default_retention=None, batch=2, pause=0, every=1, retry_cap=1)


async def finished_line(client: Client, object_name: str = "SHORT LIVED") -> str:
    """An instance taken through every mandatory status of its model (2-POINT LINE TASK's, SHORT
    LIVED's or TIMED REPORT's)."""
    token = await client.create(object_name)
    await client.set_status(token, "STARTED")
    if object_name == "TIMED REPORT":
        await client.set_status(token, "CHECKED")
    await client.set_status(token, "FINISHED")
    return token


async def event_count(db: asyncpg.Connection, token: str) -> int:
    value: int = await db.fetchval("SELECT count(*) FROM events WHERE instance_token = $1", uuid.UUID(token))
    return value


async def wait_relayed(db: asyncpg.Connection, token: str) -> None:
    """Until the instance's notifications left the outbox (an instance waits for them to be purged)."""
    for _ in range(100):
        if not await db.fetchval("SELECT count(*) FROM outbox WHERE instance_token = $1", uuid.UUID(token)):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"notifications of {token} still in the outbox")


# --- retention ------------------------------------------------------------------------------------


async def test_finished_instances_past_retention_are_purged_with_their_events(
    client: Client, store: Store, db: asyncpg.Connection
) -> None:
    """An instance finished longer ago than its model's retention is gone, events and all."""
    token = await finished_line(client)
    await wait_relayed(db, token)
    await asyncio.sleep(RETENTION + 0.2)
    assert await purger(store).purge_once() >= 1
    assert await event_count(db, token) == 0
    with pytest.raises(InstanceNotFound):
        await client.get_instance(token)


async def test_aggregates_keep_the_report_of_purged_instances(
    client: Client, store: Store, db: asyncpg.Connection
) -> None:
    """The report after a purge counts the same instances, reasons, max and breaches as before it."""
    tokens = [await finished_line(client) for _ in range(3)]
    for token in tokens:
        await wait_relayed(db, token)
    await asyncio.sleep(RETENTION + 0.2)
    before = await client.get_report("SHORT LIVED")
    assert before["purged"] < before["instances"]
    assert await purger(store).purge_once() >= 3
    after = await client.get_report("SHORT LIVED")
    assert after["purged"] == after["instances"] == before["instances"]
    assert after["sla_breaches"] == before["sla_breaches"]
    for key in ("duration", *(f"statuses.{i}" for i in range(2))):
        got, want = pick(after, key), pick(before, key)
        assert (got["count"], got["max"]) == (want["count"], want["max"])
        assert math.isclose(got["mean"], want["mean"], rel_tol=1e-9)
        for p in ("p50", "p95"):
            assert math.isclose(got[p], want[p], rel_tol=RELATIVE_ERROR)
    rows = await db.fetchval(
        "SELECT sum(count) FROM report_daily WHERE object_name = 'SHORT LIVED' AND status_name = ''"
    )
    assert rows == after["instances"]


def pick(report: dict[str, Any], key: str) -> dict[str, Any]:
    if key.startswith("statuses."):
        return dict(report["statuses"][int(key.split(".")[1])])
    return dict(report[key])


async def test_open_instances_keep_their_events(client: Client, store: Store, db: asyncpg.Connection) -> None:
    """An open instance, however old, is never purged; statusek_purge itself refuses it."""
    token = await client.create("SHORT LIVED")
    await client.set_status(token, "STARTED")
    await asyncio.sleep(RETENTION + 0.2)
    await purger(store).purge_once()
    assert await event_count(db, token) == 2
    with pytest.raises(asyncpg.RaiseError, match="only finished instances may be purged"):
        await db.fetchval("SELECT statusek_purge($1::uuid[])", [uuid.UUID(token)])
    assert await event_count(db, token) == 2


async def test_young_finished_instances_are_kept(
    client: Client, store: Store, db: asyncpg.Connection
) -> None:
    """An instance finished less than its retention ago stays, events and all."""
    token = await finished_line(client)
    await wait_relayed(db, token)
    await purger(store).purge_once()
    assert await event_count(db, token) == 4
    assert (await client.get_instance(token))["instance_is_finished"] is True


async def test_instances_without_retention_are_kept(
    client: Client, store: Store, db: asyncpg.Connection
) -> None:
    """A model without retention, and no default, keeps its finished instances forever."""
    token = await finished_line(client, "TIMED REPORT")
    await asyncio.sleep(RETENTION + 0.2)
    await purger(store).purge_once()
    assert await event_count(db, token) == 5


async def test_unsent_notifications_hold_the_purge(
    client: Client, store: Store, db: asyncpg.Connection, place: Place
) -> None:
    """An instance whose notification is still in the outbox waits for it to be sent."""
    token = await finished_line(client)
    await wait_relayed(db, token)
    # A row a worker is still publishing itself (direct, written "now" for the next hour): relays
    # leave it alone, as they do for `STATUSEK_OUTBOX_GRACE` after a window commits.
    await db.execute(
        "INSERT INTO outbox (message_id, type, instance_token, body, headers, partition, direct, created_at)"
        " VALUES ('held', 'instance-finished', $1, '{}', '{}', $2, true,"
        " clock_timestamp() + interval '1 hour')",
        uuid.UUID(token),
        outbox_partition(token),
    )
    await asyncio.sleep(RETENTION + 0.2)
    await purger(store).purge_once()
    assert await event_count(db, token) == 4
    await db.execute("DELETE FROM outbox WHERE message_id = 'held'")
    await purger(store).purge_once()
    assert await event_count(db, token) == 0


async def test_one_purger_at_a_time(client: Client, store: Store, db: asyncpg.Connection) -> None:
    """While another replica holds the purge lock, a batch does nothing and says so."""
    token = await finished_line(client)
    await wait_relayed(db, token)
    await asyncio.sleep(RETENTION + 0.2)
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", PURGE_LOCK)
        assert await purge_batch(store, "SHORT LIVED", RETENTION, 10) is None
    assert await event_count(db, token) == 4
    assert (await purge_batch(store, "SHORT LIVED", RETENTION, 10)) is not None
    assert await event_count(db, token) == 0


async def test_the_worker_purges_by_itself_with_the_default_retention(
    services: Services, amqp_user_url: str, database_owner_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STATUSEK_DEFAULT_RETENTION applies to models without retention; the worker's purger runs alone."""
    monkeypatch.setenv("STATUSEK_DEFAULT_RETENTION", "1s")
    monkeypatch.setenv("STATUSEK_PURGE_EVERY", "0.2")
    async with fresh_database(database_owner_url) as database_url:
        with fresh_vhost(amqp_user_url, admin=services.rabbit) as amqp_url:
            settings = Settings(amqp_url=amqp_url, database_url=database_url, log_level="WARNING", ops_port=0)
            assert settings.default_retention == 1.0
            async with running_worker(settings), await Client.connect(amqp_url) as client:
                token = await finished_line(client, "2-POINT LINE TASK")
                for _ in range(100):
                    try:
                        await client.get_instance(token)
                    except InstanceNotFound:
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("the worker did not purge the instance within 10 s")
                report = await client.get_report("2-POINT LINE TASK")
                assert (report["instances"], report["purged"]) == (1, 1)


# --- privileges -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    owner_url: str
    worker_url: str


@pytest.fixture
async def roles(granted: Database) -> Roles:
    """A database made and migrated by an owner role, and a worker role granted by `migrate --grant`."""
    return Roles(granted.owner_url, granted.role_url)


async def seed_finished(conn: asyncpg.Connection, token: uuid.UUID) -> None:
    """Model M and an instance of it created an hour ago, finished a minute later, with its events."""
    definition = json.dumps({"object_name": "M", "statuses": [{"name": "A", "type": "MANDATORY"}]})
    await conn.execute(
        "INSERT INTO model_versions (object_name, version, digest, definition) VALUES ('M', 1, 'd', $1)"
        " ON CONFLICT DO NOTHING",
        definition,
    )
    await conn.execute(
        "INSERT INTO instances (token, object_name, model_version, labels, create_args, created_at,"
        " statuses, last_seq, finished_at, finish_reason)"
        " VALUES ($1, 'M', 1, '{}', '{}', now() - interval '1 hour', '{A}', 3,"
        " now() - interval '59 minutes', 'ALL_MANDATORY_STATUSES_ARE_SET')",
        token,
    )
    await conn.execute(
        "INSERT INTO events (instance_token, seq, kind, occurred_at, status_name, reason) VALUES"
        " ($1, 1, 'created', now() - interval '1 hour', NULL, NULL),"
        " ($1, 2, 'status', now() - interval '59 minutes', 'A', NULL),"
        " ($1, 3, 'finished', now() - interval '59 minutes', NULL, 'ALL_MANDATORY_STATUSES_ARE_SET')",
        token,
    )


async def test_worker_role_cannot_delete_events_but_may_purge(roles: Roles) -> None:
    """The worker role's DELETE on events is refused even with the flag set; statusek_purge works."""
    conn = await asyncpg.connect(roles.worker_url)
    try:
        token = uuid.uuid4()
        await seed_finished(conn, token)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SET LOCAL statusek.purging = 'on'")
                await conn.execute("DELETE FROM events WHERE instance_token = $1", token)
        store = await Store.open(roles.worker_url)
        try:
            batch = await purge_batch(store, "M", 60, 10)
        finally:
            await store.close()
        assert batch is not None and batch.locked == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE instance_token = $1", token) == 0
        daily = await conn.fetchrow("SELECT count, max_seconds FROM report_daily WHERE status_name = ''")
        assert (daily["count"], round(daily["max_seconds"])) == (1, 60)
    finally:
        await conn.close()


async def test_the_owner_still_cannot_delete_events_without_the_function(roles: Roles) -> None:
    """Outside statusek_purge the trigger refuses DELETE, and UPDATE and TRUNCATE always."""
    conn = await asyncpg.connect(roles.owner_url)
    try:
        await seed_finished(conn, uuid.uuid4())
        for statement in ("DELETE FROM events", "UPDATE events SET kind = kind", "TRUNCATE events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


# --- reports --------------------------------------------------------------------------------------


def nearest_rank(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


def expected_figures(values: list[float]) -> dict[str, Any]:
    """The figures of these durations; the mean rounded, since a sum depends on its order."""
    return {
        "count": len(values),
        "p50": nearest_rank(values, 50),
        "p95": nearest_rank(values, 95),
        "max": max(values),
        "mean": round(sum(values) / len(values), 9),
        "exact": True,
    }


def rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {**figures, "mean": round(figures["mean"], 9)}


async def test_report_matches_the_durations_of_the_recorded_events(client: Client) -> None:
    """Every figure of get-report equals what the instances' own events give, computed here."""
    tokens = []
    for i in range(6):
        token = await client.create("EXACT REPORT")
        await asyncio.sleep(0.02 * i)
        await client.set_status(token, "STARTED")
        await asyncio.sleep(0.03 * (6 - i))
        if i == 4:
            await client.set_status(token, "FAILED")
        elif i == 5:
            await client.cancel(token)
        else:
            await client.set_status(token, "CHECKED")
            await client.set_status(token, "FINISHED")
        tokens.append(token)
    timed_out = await client.create("EXACT REPORT", instance_timeout=0.3)
    assert await client.wait_finished(timed_out, timeout=10) == "TIMEOUT"
    tokens.append(timed_out)

    whole: list[float] = []
    by_reason: dict[str, list[float]] = defaultdict(list)
    by_status: dict[str, list[float]] = defaultdict(list)
    for token in tokens:
        events = await client.get_events(token)
        times = [datetime.fromisoformat(e["occurred_at"]) for e in events]
        seconds = (times[-1] - times[0]).total_seconds()
        whole.append(seconds)
        by_reason[events[-1]["reason"]].append(seconds)
        previous = times[0]
        for e, at in zip(events, times, strict=True):
            if e["kind"] == "status":
                by_status[e["status_name"]].append((at - previous).total_seconds())
                previous = at

    report = await client.get_report("EXACT REPORT")
    assert (report["instances"], report["purged"], report["sla"]) == (len(tokens), 0, 0.15)
    assert report["sla_breaches"] == sum(1 for s in whole if s > 0.15)
    assert rounded(report["duration"]) == expected_figures(whole)
    assert {r.pop("finish_reason"): rounded(r) for r in report["by_reason"]} == {
        reason: expected_figures(values) for reason, values in by_reason.items()
    }
    assert [s["status_name"] for s in report["statuses"]] == ["STARTED", "CHECKED", "FINISHED", "FAILED"]
    assert {s.pop("status_name"): rounded(s) for s in report["statuses"]} == {
        name: expected_figures(values) for name, values in by_status.items()
    }


async def test_report_counts_the_days_asked_for(client: Client) -> None:
    """since/until select instances by their day of finish (UTC), both days included."""
    await finished_line(client, "TIMED REPORT")
    today = datetime.now(UTC).date()
    everything = await client.get_report("TIMED REPORT")
    assert (await client.get_report("TIMED REPORT", since=today, until=today))["instances"] == everything[
        "instances"
    ]
    assert (await client.get_report("TIMED REPORT", until=today - timedelta(days=1)))["instances"] == 0
    assert (await client.get_report("TIMED REPORT", since=today + timedelta(days=1)))["instances"] == 0


async def test_report_of_an_unknown_object_is_refused(client: Client) -> None:
    """get-report names an object no model has with OBJECT_NAME_IS_NOT_FOUND."""
    reply = await client.request("statusek.queries", "get-report", {"object_name": "NO SUCH OBJECT"})
    assert (reply["status"], reply["code"]) == (False, "OBJECT_NAME_IS_NOT_FOUND")


# --- ping summary ---------------------------------------------------------------------------------


async def test_get_instance_summarises_pings_per_sender(client: Client, place: Place) -> None:
    """Pings are counted per sender with first and last time and the last message, latest sender first."""
    token = await client.create("TIMED REPORT")
    await client.ping(token, "page 1")
    await client.ping(token, "page 2")
    wire = await Wire.open(place.amqp_url)
    try:
        reply = await wire.request("ping", {"instance_token": token, "message": "from the UI"})
        assert reply["code"] == "SUCCESS"
    finally:
        await wire.close()
    events = await client.get_events(token)
    pings = (await client.get_instance(token))["pings"]
    assert [(p["sender"], p["count"], p["last_message"]) for p in pings] == [
        ("anonymous", 1, "from the UI"),
        (client.user, 2, "page 2"),
    ]
    mine = [e for e in events if e["kind"] == "ping" and e["actor"] == client.user]
    assert (pings[1]["first_at"], pings[1]["last_at"]) == (mine[0]["occurred_at"], mine[-1]["occurred_at"])


# --- the CLI --------------------------------------------------------------------------------------


async def statusek(place: Place, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATUSEK_AMQP_URL": place.amqp_url, "STATUSEK_MODELS_PATH": place.models_path}
    return await helpers.statusek(env, *args)


async def test_show_prints_the_ping_summary(client: Client, place: Place) -> None:
    """`statusek show` has a PINGS BY table: sender, count, first, last, last message."""
    token = await client.create("TIMED REPORT")
    await client.ping(token, "warming up")
    await client.ping(token, "half way")
    shown = await statusek(place, "show", token)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PINGS BY"))
    assert lines[header].split() == ["PINGS", "BY", "COUNT", "FIRST", "LAST", "LAST", "MESSAGE"]
    row = lines[header + 1]
    assert row.startswith(client.user) and row.split()[1] == "2" and row.endswith("half way")


async def test_report_prints_a_table_json_and_a_chart(client: Client, place: Place, tmp_path: Path) -> None:
    """`statusek report` prints per-reason and per-status rows, --json the data, --plot a PNG."""
    await finished_line(client, "TIMED REPORT")
    human = await statusek(place, "report", "TIMED REPORT")
    assert human.returncode == 0, human.stderr
    assert "ALL_MANDATORY_STATUSES_ARE_SET" in human.stdout
    assert any(line.split()[:1] == ["STARTED"] for line in human.stdout.splitlines())
    as_json = json.loads((await statusek(place, "report", "TIMED REPORT", "--json")).stdout)
    assert as_json["object_name"] == "TIMED REPORT" and as_json["instances"] >= 1
    chart = tmp_path / "report.png"
    drawn = await statusek(
        place, "report", "TIMED REPORT", "--plot", str(chart), "--since", str(datetime.now(UTC).date())
    )
    assert drawn.returncode == 0, drawn.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unknown = await statusek(place, "report", "TIMED REPORTS")
    assert unknown.returncode == 1 and "OBJECT_NAME_IS_NOT_FOUND" in unknown.stderr
    assert "TIMED REPORT" in unknown.stderr  # the closest name
