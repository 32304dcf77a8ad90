"""How fast do the sweepers finish a backlog of overdue instances?

Creates N open instances whose deadlines are already past (written straight
into a fresh database, as if the workers had been down while they expired),
starts K worker processes, and reports how long the sweepers take to finish
them all and how long until every notification has left the outbox.

    .venv/bin/python benchmarks/sweep_overdue.py --instances 100000 --workers 3

Uses its own database and vhost and removes both afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import asyncpg

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import Store
from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    fresh_database,
    fresh_vhost,
    worker_processes,
)

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)


async def seed(db_url: str, count: int) -> None:
    store = await Store.open(db_url)
    models, _ = load_models([ROOT / "src" / "statusek" / "models"])
    versions = await store.sync_models(models)
    await store.close()
    conn = await asyncpg.connect(db_url)
    try:
        started = time.perf_counter()
        await conn.execute(
            """
            WITH made AS (
                INSERT INTO instances (token, object_name, model_version, labels, create_args, created_at,
                                       instance_deadline, next_deadline, statuses, last_seq)
                SELECT gen_random_uuid(), '2-POINT LINE TASK', $2, '{}', '{}',
                       now() - interval '10 minutes',
                       now() - interval '1 minute' + i * interval '1 microsecond',
                       now() - interval '1 minute' + i * interval '1 microsecond', '{}', 1
                FROM generate_series(1, $1) AS i
                RETURNING token, created_at
            )
            INSERT INTO events (instance_token, seq, kind, occurred_at)
            SELECT token, 1, 'created', created_at FROM made
            """,
            count,
            versions["2-POINT LINE TASK"],
        )
        print(f"seeded {count} overdue instances in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await conn.close()


async def watch(db_url: str, count: int, started: float) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        swept_at = None
        while True:
            open_, outbox = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM instances WHERE next_deadline IS NOT NULL),"
                " (SELECT count(*) FROM outbox)"
            )
            elapsed = time.perf_counter() - started
            print(
                f"  {elapsed:6.1f} s: {count - open_:>7} finished, {outbox:>7} notifications unsent",
                flush=True,
            )
            if open_ == 0 and swept_at is None:
                swept_at = elapsed
            if open_ == 0 and outbox == 0:
                break
            await asyncio.sleep(1)
        first, last, finishes = await conn.fetchrow(
            "SELECT min(recorded_at), max(recorded_at), count(*) FROM events WHERE kind = 'finished'"
        )
        sweep_seconds = (last - first).total_seconds()
        print(f"finish events: {finishes} (expected {count})")
        rate = finishes / max(sweep_seconds, 1e-9)
        print(f"first to last finish event: {sweep_seconds:.2f} s = {rate:,.0f} instances/s")
        print(f"worker start to all finished: {swept_at:.1f} s; to outbox empty: {elapsed:.1f} s")
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()

    with fresh_vhost(AMQP, prefix="statusek-bench") as amqp_url:
        async with fresh_database(PG, prefix="statusek_bench") as db_url:
            await seed(db_url, args.instances)
            env = {
                **os.environ,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_AMQP_URL": amqp_url,
                "STATUSEK_LOG_LEVEL": "WARNING",
            }
            started = time.perf_counter()
            with worker_processes(env, args.workers):
                print(f"started {args.workers} workers", flush=True)
                await watch(db_url, args.instances, started)


if __name__ == "__main__":
    asyncio.run(main())
