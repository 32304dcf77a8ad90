"""How does find-instances run on a million instances? Plans and timings per filter.

Creates a throw-away database, writes N instances straight into it (generate_series: 20
objects of skewed sizes and one rare one; labels team, env, tenant and a unique job; about 2 %
open, the rest finished for every reason; a few past their deadline and not swept yet),
VACUUM ANALYZE, then for each filter combination prints EXPLAIN (ANALYZE, BUFFERS) of the very
SELECT the worker runs and times it through the store (prepared, as the worker does).
Also times building each index of migration 005 on the filled table.

    .venv/bin/python benchmarks/find_instances_plan.py --instances 1000000

Uses its own database and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import Store, find_instances_sql
from statusek.core.messages import FindInstances, encode_cursor
from statusek.testing import LOCAL_ADMIN_DATABASE_URL, fresh_database

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)
CHUNK = 100_000
FORCED = "_set"  # a setting for this case's EXPLAIN only, to show a plan the planner did not choose

SEED = """
INSERT INTO instances (token, object_name, model_version, labels, create_args, created_at,
                       instance_deadline, heartbeat_timeout, heartbeat_deadline, next_deadline,
                       statuses, last_seq, finished_at, finish_reason)
SELECT gen_random_uuid(), object_name, 1, labels, '{}', created_at,
       deadline, NULL, NULL, CASE WHEN open THEN deadline END,
       CASE WHEN reason = 'ALL_MANDATORY_STATUSES_ARE_SET' THEN '{STARTED,FINISHED}'::text[]
            ELSE '{STARTED}' END,
       3, CASE WHEN NOT open THEN created_at + interval '5 minutes' END,
       CASE WHEN NOT open THEN reason END
FROM (
  SELECT *, CASE WHEN r < 0.85 THEN 'ALL_MANDATORY_STATUSES_ARE_SET'
                 WHEN r < 0.90 THEN 'CANCELLED'
                 WHEN r < 0.94 THEN 'STOP_STATUS_IS_SET'
                 WHEN r < 0.98 THEN 'TIMEOUT'
                 ELSE 'HEARTBEAT_TIMEOUT' END AS reason
  FROM (
    SELECT i,
           CASE WHEN random() < 0.0001 THEN 'RARE OBJECT'
                ELSE format('OBJECT %s', lpad(floor(20 * random() ^ 3)::text, 2, '0')) END AS object_name,
           jsonb_build_object(
               'team', 'team-' || floor(random() * 40),
               'env', (ARRAY['prod', 'staging', 'dev'])[1 + floor(random() * 3)::int],
               'tenant', 'tenant-' || floor(random() ^ 2 * 2000),
               'job', i::text) AS labels,
           now() - interval '90 days' + (i::float / $2) * interval '90 days'
               + random() * interval '1 minute' AS created_at,
           -- the last two days are mostly open, older instances rarely
           random() < CASE WHEN i > $2 * 88 / 90 THEN 0.8 ELSE 0.004 END AS open,
           CASE WHEN random() < 0.0005 THEN now() - interval '1 minute'   -- overdue, not swept yet
                ELSE now() + random() * interval '1 day' END AS deadline,
           random() AS r
    FROM generate_series($1::int, $1::int + $3 - 1) AS i
  ) AS drawn
) AS made
"""

INDEXES = {
    "instances_created": "CREATE INDEX instances_created ON instances (created_at, token)",
    "instances_object_created": "CREATE INDEX instances_object_created"
    " ON instances (object_name, created_at, token)",
    "instances_open_created": "CREATE INDEX instances_open_created ON instances (created_at, token)"
    " WHERE finished_at IS NULL",
    "instances_labels": "CREATE INDEX instances_labels ON instances USING gin (labels jsonb_path_ops)",
}


async def seed(db_url: str, count: int) -> None:
    store = await Store.open(db_url)
    models, _ = load_models([ROOT / "src" / "statusek" / "models"])
    await store.sync_models(models)
    await store.close()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO model_versions (object_name, version, digest, definition)"
            " SELECT name, 1, 'bench', jsonb_set(definition, '{object_name}', to_jsonb(name))"
            " FROM model_versions, (SELECT format('OBJECT %s', lpad(o::text, 2, '0')) AS name"
            "  FROM generate_series(0, 19) AS o UNION ALL SELECT 'RARE OBJECT') AS objects"
            " WHERE object_name = '2-POINT LINE TASK'"
        )
        started = time.perf_counter()
        for first in range(1, count + 1, CHUNK):
            await conn.execute(SEED, first, count, min(CHUNK, count - first + 1))
            print(f"  {first + CHUNK - 1:>9,} rows, {time.perf_counter() - started:6.1f} s", flush=True)
        print(f"seeded {count:,} instances (indexes in place) in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) instances")
        print(f"VACUUM (ANALYZE) in {time.perf_counter() - started:.1f} s")
        print("\nindex builds on the filled table (what migration 005 costs on an existing one):")
        for name, create in INDEXES.items():
            await conn.execute(f"DROP INDEX {name}")
            started = time.perf_counter()
            await conn.execute(create)
            size = await conn.fetchval("SELECT pg_size_pretty(pg_relation_size($1::regclass))", name)
            print(f"  {name:<26} {time.perf_counter() - started:6.1f} s, {size}")
        await conn.execute("ANALYZE instances")
        print("\nmix:")
        for row in await conn.fetch(
            "SELECT coalesce(finish_reason, 'open') AS state, count(*) FROM instances"
            " GROUP BY 1 ORDER BY 2 DESC"
        ):
            print(f"  {row['state']:<32} {row['count']:>9,}")
        objects = await conn.fetch("SELECT object_name, count(*) FROM instances GROUP BY 1 ORDER BY 2 DESC")
        print(f"  objects: {', '.join(f'{r[0]} {r[1]:,}' for r in [*objects[:3], *objects[-2:]])}")
    finally:
        await conn.close()


async def cases(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    middle = await conn.fetchrow(
        "SELECT created_at, token FROM instances ORDER BY created_at, token OFFSET $1 LIMIT 1",
        await conn.fetchval("SELECT count(*) / 2 FROM instances"),
    )
    deep = encode_cursor(middle["created_at"], middle["token"])
    day = await conn.fetchval("SELECT min(created_at) + interval '45 days' FROM instances")
    job = await conn.fetchval("SELECT labels->>'job' FROM instances OFFSET 777777 LIMIT 1") or "1"
    return {
        "no filter, first page": {},
        "no filter, cursor half way (row 500,000)": {"after": deep},
        "object (largest, ~37 %)": {"object_name": "OBJECT 00"},
        "object (rare, ~0.01 %)": {"object_name": "RARE OBJECT"},
        "object, cursor half way": {"object_name": "OBJECT 05", "after": deep},
        "label team (~2.5 %)": {"labels": {"team": "team-7"}},
        "label tenant (rare, ~0.02 %)": {"labels": {"tenant": "tenant-1999"}},
        "label job (unique)": {"labels": {"job": job}},
        "labels team+env": {"labels": {"team": "team-7", "env": "prod"}},
        "label env (~33 %)": {"labels": {"env": "prod"}},
        "open (~2 %)": {"finished": False},
        "finished": {"finished": True},
        "reason CANCELLED (~5 %)": {"finish_reason": "CANCELLED"},
        "reason TIMEOUT (or overdue)": {"finish_reason": "TIMEOUT"},
        "reason HEARTBEAT_TIMEOUT (or overdue)": {"finish_reason": "HEARTBEAT_TIMEOUT"},
        "created in one day": {"created_after": day, "created_before": day + timedelta(days=1)},
        "object + open": {"object_name": "OBJECT 03", "finished": False},
        "object + label": {"object_name": "OBJECT 00", "labels": {"team": "team-7"}},
        "label + open": {"labels": {"env": "dev"}, "finished": False},
        "object + reason + one day": {
            "object_name": "OBJECT 01",
            "finish_reason": "STOP_STATUS_IS_SET",
            "created_after": day,
            "created_before": day + timedelta(days=1),
        },
        "rare object + open (no match)": {"object_name": "RARE OBJECT", "finished": False},
        "label matching nothing": {"labels": {"env": "nope"}},
        # The worst case: each key is common, together they match nothing, and the planner,
        # expecting many, walks (created_at, token) to the end filtering on labels.
        "labels each common, together nothing": {"labels": {"team": "team-7", "env": "nope"}},
        # The same, had the planner walked (created_at, token) instead of using the GIN index.
        "labels together nothing, walking the order (forced)": {
            "labels": {"team": "team-7", "env": "nope"},
            FORCED: "SET LOCAL enable_bitmapscan = off",
        },
        "everything": {
            "object_name": "OBJECT 02",
            "labels": {"env": "prod"},
            "finished": True,
            "finish_reason": "ALL_MANDATORY_STATUSES_ARE_SET",
            "created_after": day,
            "created_before": day + timedelta(days=7),
            "after": encode_cursor(day, middle["token"]),
        },
    }


async def explain(db_url: str, runs: int) -> None:
    conn = await asyncpg.connect(db_url)
    store = await Store.open(db_url)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    summary = []
    try:
        now = await conn.fetchval("SELECT clock_timestamp()")
        for name, filters in (await cases(conn)).items():
            forced = filters.pop(FORCED, None)
            query = FindInstances(**filters)
            sql, *args = find_instances_sql(query, now)
            async with conn.transaction():
                if forced:
                    await conn.execute(forced)
                plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            if forced:
                print(f"\n(forced with {forced}; the timings below are of the planner's own choice)")
            print(f"\n=== {name}: {filters if 'after' not in filters else {**filters, 'after': '…'}}")
            print("    WHERE " + sql.split(" WHERE ", 1)[1])
            for line in plan:
                print("    " + line[0])
            timings, found = [], 0
            for _ in range(runs):  # through the store: prepared statements, as the worker runs it
                started = time.perf_counter()
                states, _ = await store.find_instances(query)
                timings.append((time.perf_counter() - started) * 1000)
                found = len(states)
            summary.append((name, found, statistics.median(timings), max(timings)))
        print(
            f"\n{'case':<52} {'rows':>5} {'median ms':>10} {'max ms':>8}   ({runs} runs each, through Store)"
        )
        for name, found, median, most in summary:
            print(f"{name:<52} {found:>5} {median:>10.2f} {most:>8.2f}")
    finally:
        await store.close()
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    async with fresh_database(PG, prefix="statusek_bench") as db_url:
        await seed(db_url, args.instances)
        await explain(db_url, args.runs)


if __name__ == "__main__":
    asyncio.run(main())
