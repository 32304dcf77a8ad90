"""The cost of background work: the sweeper's and the expiry of idempotency records.

The sweeper: an index-bounded scan for overdue rows, and no tight loop on rows held elsewhere.
The expiry: one replica at a time, in batches. Each test has a database of its own, so no other
worker (the session's) races it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import EXPIRY_LOCK, LOCK_OVERDUE, Store
from statusek.testing import fresh_database
from statusek.worker.sweeper import Sweeper

pytestmark = pytest.mark.integration

MODEL = "2-POINT LINE TASK"


@pytest.fixture
async def own_db(database_owner_url: str) -> AsyncIterator[str]:
    async with fresh_database(database_owner_url) as url:
        yield url


@pytest.fixture
async def store(own_db: str, models_path: str) -> AsyncIterator[Store]:
    store = await Store.open(own_db)
    models, errors = load_models(Path(p) for p in models_path.split(":"))
    assert not errors
    await store.sync_models(models)
    yield store
    await store.close()


async def insert_open(conn: asyncpg.Connection, count: int, deadline_sql: str) -> list[uuid.UUID]:
    """`count` open instances of MODEL whose deadline (and next_deadline) is `deadline_sql`."""
    rows = await conn.fetch(
        "INSERT INTO instances (token, object_name, model_version, labels, create_args, created_at,"
        "  instance_deadline, next_deadline, statuses, last_seq)"
        f" SELECT gen_random_uuid(), $1, (SELECT max(version) FROM model_versions WHERE object_name = $1),"
        f"  '{{}}'::jsonb, '{{}}'::jsonb, now(), {deadline_sql}, {deadline_sql}, '{{}}', 0"
        " FROM generate_series(1, $2) RETURNING token",
        MODEL,
        count,
    )
    return [r["token"] for r in rows]


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in nodes(child))]


async def test_overdue_lookup_is_an_index_range_scan(store: Store, own_db: str) -> None:
    """With 50,000 open instances, none overdue, the overdue lookup reads the index up to its bound."""
    conn = await asyncpg.connect(own_db)
    try:
        await insert_open(conn, 50_000, "now() + interval '1 hour' + interval '1 day' * random()")
        await conn.execute("ANALYZE instances")
        bound = await conn.fetchval("SELECT clock_timestamp()")
        plans = []
        # asyncpg prepares the statement: after five runs Postgres may switch to a generic plan.
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {LOCK_OVERDUE}", bound, 500)
            plans.append((json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"])
    finally:
        await conn.close()
    for plan in plans:
        scans = [n for n in nodes(plan) if "Index" in n["Node Type"]]
        assert scans, f"no index scan in {plan}"
        assert "next_deadline <=" in scans[0].get("Index Cond", ""), scans[0]
        # With the clock in a filter instead, the scan read all 50,000 rows to find none.
        assert all(n.get("Rows Removed by Filter", 0) == 0 for n in nodes(plan)), plan
        assert scans[0]["Actual Rows"] == 0


async def test_overdue_row_locked_elsewhere_is_retried_with_backoff(store: Store, own_db: str) -> None:
    """A held overdue row is looked at a few times a second at most, and finished once free."""
    holder = await asyncpg.connect(own_db)
    try:
        [token] = await insert_open(holder, 1, "now() - interval '1 second'")
        sweeper = Sweeper(store, batch=10, max_sleep=5.0, retry_cap=1.0)
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM instances WHERE token = $1 FOR UPDATE", token)
        running = asyncio.create_task(sweeper.run())
        try:
            await asyncio.sleep(3)
            held_passes = sweeper.passes
            assert sweeper.finished == 0
            await hold.rollback()
            for _ in range(50):
                if sweeper.finished:
                    break
                await asyncio.sleep(0.1)
        finally:
            sweeper.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(running, 10)
        # Unbounded, this was a pass every few milliseconds (85 full scans in 3 s on a big table).
        assert held_passes <= 12, held_passes
        assert sweeper.finished == 1
        reason = await holder.fetchval("SELECT finish_reason FROM instances WHERE token = $1", token)
        assert reason == "TIMEOUT"
    finally:
        await holder.close()


async def insert_processed(conn: asyncpg.Connection, count: int, age: str) -> None:
    await conn.execute(
        "INSERT INTO processed_messages (message_id, reply, processed_at)"
        " SELECT gen_random_uuid()::text, '{}'::jsonb, now() - $2::text::interval"
        " FROM generate_series(1, $1)",
        count,
        age,
    )


async def test_expiry_is_skipped_while_another_replica_expires(store: Store, own_db: str) -> None:
    """A replica that finds the expiry lock taken deletes nothing; the holder's pass is the one that runs."""
    other = await asyncpg.connect(own_db)
    try:
        await insert_processed(other, 100, "2 days")
        await other.execute("SELECT pg_advisory_lock($1)", EXPIRY_LOCK)
        assert await store.expire_processed(3600) == 0
        assert await other.fetchval("SELECT count(*) FROM processed_messages") == 100
        await other.execute("SELECT pg_advisory_unlock($1)", EXPIRY_LOCK)
        assert await store.expire_processed(3600) == 100
    finally:
        await other.close()


async def test_expiry_deletes_in_committed_batches(store: Store, own_db: str) -> None:
    """Old records go in batches that commit one by one, and records inside the window stay."""
    other = await asyncpg.connect(own_db)
    try:
        await insert_processed(other, 12_000, "2 days")
        await insert_processed(other, 10, "1 minute")
        expiring = asyncio.create_task(store.expire_processed(3600, batch=1000, pause=0.2))
        seen: set[int] = set()
        while not expiring.done():
            seen.add(await other.fetchval("SELECT count(*) FROM processed_messages"))
            await asyncio.sleep(0.05)
        assert await expiring == 12_000
        # One DELETE would show only the count before and the count after.
        assert len({n for n in seen if 10 < n < 12_010}) >= 3, sorted(seen)
        assert await other.fetchval("SELECT count(*) FROM processed_messages") == 10
        # The lock went with the pass: the next one runs.
        assert await store.expire_processed(30) == 10
    finally:
        await other.close()
