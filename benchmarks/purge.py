"""Does purging a million finished instances slow the commands down?

Fills a fresh database with N finished instances of `BENCH PURGE` (four events each, finished two
days ago), starts one worker process, and drives a steady load of commands through
`statusek.Client` (create, STARTED, FINISHED of `2-POINT LINE TASK`, at --rate commands/s, each
command's latency measured from its send to its reply). After a warm-up it measures --baseline
seconds without purging, then turns retention on for `BENCH PURGE` (a new model version with
`retention: 1h`, which the worker's purger reads at its next pass) and measures until every seeded
instance is purged, then --baseline seconds more without purging (the machine's drift). Prints
p50/p95/p99/max of the three phases, the purge rate, and a progress bar on stderr.

    .venv/bin/python benchmarks/purge.py --instances 1000000
    .venv/bin/python benchmarks/purge.py --instances 100000 --json

Uses its own database and vhost and removes both afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import structlog
import yaml

from statusek.adapters.postgres.store import Store
from statusek.client import Client
from statusek.core.model import parse_model
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
BENCH = "BENCH PURGE"
LOAD = "2-POINT LINE TASK"
BENCH_MODEL = f"""
object_name: {BENCH}
statuses:
  - {{name: STARTED, type: MANDATORY}}
  - {{name: FINISHED, type: MANDATORY, after: [STARTED]}}
"""
CHUNK = 50_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bar(done: int, total: int, width: int = 30) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done / total if total else 1:4.0%}"


async def seed(db_url: str, count: int) -> float:
    """N finished instances of BENCH PURGE with their four events, two days old; returns seconds taken."""
    store = await Store.open(db_url)
    try:
        await store.sync_models([parse_model(yaml.safe_load(BENCH_MODEL))])  # version 1
    finally:
        await store.close()
    conn = await asyncpg.connect(db_url)
    started = time.perf_counter()
    try:
        for first in range(0, count, CHUNK):
            n = min(CHUNK, count - first)
            await conn.execute(
                """
                WITH made AS (
                    INSERT INTO instances (token, object_name, model_version, labels, create_args,
                                           created_at, statuses, last_seq, finished_at, finish_reason)
                    SELECT gen_random_uuid(), $1, 1, '{}', '{}', t0, '{STARTED,FINISHED}', 4,
                           t0 + (0.5 + random() * 30) * interval '1 second', 'ALL_MANDATORY_STATUSES_ARE_SET'
                    FROM (SELECT now() - interval '2 days' - (($2 + i) * interval '40 ms') AS t0
                          FROM generate_series(1, $3) AS i) AS s
                    RETURNING token, created_at, finished_at
                )
                INSERT INTO events (instance_token, seq, kind, occurred_at, status_name, status_type,
                                    reason, actor)
                SELECT token, e.seq, e.kind, e.at, e.status_name, e.status_type, e.reason, 'bench'
                FROM made CROSS JOIN LATERAL (VALUES
                    (1, 'created', created_at, NULL, NULL, NULL),
                    (2, 'status', created_at + (finished_at - created_at) * 0.3, 'STARTED', 'MANDATORY',
                     NULL),
                    (3, 'status', finished_at, 'FINISHED', 'MANDATORY', NULL),
                    (4, 'finished', finished_at, NULL, NULL, 'ALL_MANDATORY_STATUSES_ARE_SET')
                ) AS e(seq, kind, at, status_name, status_type, reason)
                """,
                BENCH,
                first,
                n,
            )
            elapsed = time.perf_counter() - started
            print(
                f"\rseeding {bar(first + n, count)} {first + n:,}/{count:,} instances, {elapsed:5.1f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
        await conn.execute("VACUUM ANALYZE instances")
        await conn.execute("VACUUM ANALYZE events")
        # Write the seeded pages out now, not during the baseline (needs a superuser or pg_checkpoint).
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - started


@dataclass
class Load:
    """Chains of create, STARTED, FINISHED started at a steady rate; latency of every command."""

    client: Client
    rate: float  # commands per second
    phase: str = "warm-up"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        every = 3 / self.rate  # three commands per chain
        start = loop.time()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, start + k * every - loop.time()))
            task = asyncio.create_task(self.chain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def chain(self) -> None:
        try:
            token = await self.timed(self.client.create(LOAD, timeout=30))
            await self.timed(self.client.set_status(token, "STARTED", timeout=30))
            await self.timed(self.client.set_status(token, "FINISHED", timeout=30))
        except Exception as e:
            self.errors[self.phase] = self.errors.get(self.phase, 0) + 1
            say(f"command failed: {type(e).__name__}: {e}")

    async def timed(self, call: Any) -> Any:
        phase, sent = self.phase, time.perf_counter()
        result = await call
        self.latencies.setdefault(phase, []).append(time.perf_counter() - sent)
        return result


def figures(latencies: list[float], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def rank(p: float) -> float:
        return (
            round(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] * 1000, 2) if ordered else math.nan
        )

    return {
        "commands": len(ordered),
        "seconds": round(seconds, 1),
        "commands_per_s": round(len(ordered) / seconds, 1) if seconds else None,
        "p50_ms": rank(50),
        "p95_ms": rank(95),
        "p99_ms": rank(99),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else math.nan,
    }


async def turn_retention_on(db_url: str) -> None:
    """A new version of BENCH PURGE with `retention: 1h`: the purger applies the latest version's."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT version, definition FROM model_versions WHERE object_name = $1"
            " ORDER BY version DESC LIMIT 1",
            BENCH,
        )
        model = replace(parse_model(json.loads(row["definition"])), retention=3600.0)
        await conn.execute(
            "INSERT INTO model_versions (object_name, version, digest, definition) VALUES ($1, $2, $3, $4)",
            BENCH,
            row["version"] + 1,
            model.digest(),
            json.dumps(model.definition()),
        )
    finally:
        await conn.close()


async def purged_so_far(conn: asyncpg.Connection) -> int:
    """Instances of BENCH PURGE folded into the daily report: purged (a tiny table, cheap to ask)."""
    value = await conn.fetchval(
        "SELECT coalesce(sum(count), 0) FROM report_daily WHERE object_name = $1 AND status_name = ''", BENCH
    )
    return int(value)


async def measure(args: argparse.Namespace, amqp_url: str, db_url: str) -> dict[str, Any]:
    seed_seconds = await seed(db_url, args.instances)
    models = Path(tempfile.mkdtemp(prefix="statusek-bench-models-"))
    (models / "bench-purge.yaml").write_text(BENCH_MODEL)
    env = {
        **os.environ,
        "STATUSEK_DATABASE_URL": db_url,
        "STATUSEK_AMQP_URL": amqp_url,
        "STATUSEK_MODELS_PATH": f"{ROOT / 'src' / 'statusek' / 'models'}:{models}",
        "STATUSEK_LOG_LEVEL": "WARNING",
        "STATUSEK_OPS_PORT": "0",
        "STATUSEK_PURGE_EVERY": "1",
        "STATUSEK_PURGE_BATCH": str(args.batch),
        "STATUSEK_PURGE_PAUSE": str(args.pause),
    }
    with worker_processes(env, 1):
        client = await connect_when_ready(amqp_url)
        load = Load(client, args.rate)
        driver = asyncio.create_task(load.run())
        conn = await asyncpg.connect(db_url)
        try:
            say(f"warming up for {args.warmup:g} s at {args.rate:g} commands/s")
            await asyncio.sleep(args.warmup)
            load.phase = "baseline"
            started = time.perf_counter()
            while (elapsed := time.perf_counter() - started) < args.baseline:
                print(
                    f"\rbaseline {bar(int(elapsed), int(args.baseline))} {elapsed:5.1f} s",
                    end="",
                    file=sys.stderr,
                )
                await asyncio.sleep(1)
            baseline_seconds = time.perf_counter() - started
            print(file=sys.stderr)
            load.phase = "purge"
            await turn_retention_on(db_url)
            turned_on = time.perf_counter()
            first_purged: float | None = None  # the first poll that saw purged instances
            purged = purged_first = 0
            while purged < args.instances and time.perf_counter() - turned_on < args.max_purge_seconds:
                await asyncio.sleep(1)
                purged = await purged_so_far(conn)
                now = time.perf_counter()
                if purged and first_purged is None:
                    first_purged, purged_first = now, purged
                rate = (
                    (purged - purged_first) / (now - first_purged)
                    if first_purged and now > first_purged
                    else 0.0
                )
                print(
                    f"\rpurge    {bar(purged, args.instances)} {purged:,}/{args.instances:,} purged,"
                    f" {rate:,.0f}/s, {now - turned_on:5.1f} s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            finished = time.perf_counter()
            print(file=sys.stderr)
            load.phase = "after"
            say(f"measuring {args.baseline:g} s more without purging")
            await asyncio.sleep(args.baseline)
            after_seconds = time.perf_counter() - finished
            load.phase = "done"
            driver.cancel()
            await asyncio.gather(*load.tasks, return_exceptions=True)
            remaining = await conn.fetchval("SELECT count(*) FROM instances WHERE object_name = $1", BENCH)
            events_left = await conn.fetchval(
                "SELECT count(*) FROM events e JOIN instances i ON i.token = e.instance_token"
                " WHERE i.object_name = $1",
                BENCH,
            )
        finally:
            await conn.close()
            await client.close()
    purge_seconds = finished - turned_on
    return {
        "instances": args.instances,
        "seed_seconds": round(seed_seconds, 1),
        "rate_commands_per_s": args.rate,
        "purge_batch": args.batch,
        "purge_pause_s": args.pause,
        "without_purge": figures(load.latencies.get("baseline", []), baseline_seconds),
        "during_purge": figures(load.latencies.get("purge", []), purge_seconds),
        "after_purge": figures(load.latencies.get("after", []), after_seconds),
        "purged": purged,
        "purge_seconds": round(purge_seconds, 1),
        # Between the first and the last poll that saw purged instances: the steady rate.
        "purge_rate_per_s": (
            round((purged - purged_first) / (finished - first_purged), 1)
            if first_purged and finished > first_purged
            else None
        ),
        "instances_left": remaining,
        "events_left": events_left,
        "errors": load.errors,
    }


async def connect_when_ready(url: str) -> Client:
    for _ in range(300):
        try:
            client = await Client.connect(url, timeout=5)
            await client.create(LOAD, timeout=10)
            return client
        except Exception:
            await asyncio.sleep(0.2)
    raise TimeoutError("the worker did not start")


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['instances']:,} finished instances seeded in {result['seed_seconds']} s;"
        f" load {result['rate_commands_per_s']:g} commands/s (create, STARTED, FINISHED)",
        "",
        f"{'':<15}{'commands':>9}{'cmd/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for name, key in (
        ("without purge", "without_purge"),
        ("during purge", "during_purge"),
        ("after purge", "after_purge"),
    ):
        f = result[key]
        lines.append(
            f"{name:<15}{f['commands']:>9}{f['commands_per_s']:>8}{f['p50_ms']:>9}{f['p95_ms']:>9}"
            f"{f['p99_ms']:>9}{f['max_ms']:>9}"
        )
    lines += [
        "",
        f"purged {result['purged']:,} instances in {result['purge_seconds']} s from turning retention on:"
        f" {result['purge_rate_per_s'] or 0:,.0f} instances/s once started"
        f" (batches of {result['purge_batch']}, {result['purge_pause_s']} s apart)",
        f"left: {result['instances_left']} instances, {result['events_left']} events;"
        f" errors: {result['errors']}",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000, help="finished instances to purge")
    parser.add_argument("--rate", type=float, default=200, help="commands per second during the test")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of load before measuring")
    parser.add_argument("--baseline", type=float, default=30, help="seconds measured without purging")
    parser.add_argument("--max-purge-seconds", type=float, default=1800, help="give up after this")
    parser.add_argument("--batch", type=int, default=1000, help="STATUSEK_PURGE_BATCH")
    parser.add_argument("--pause", type=float, default=0.5, help="STATUSEK_PURGE_PAUSE")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    # Library logs (the migrations) on stderr: stdout carries the result alone, JSON with --json.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    with fresh_vhost(AMQP, prefix="statusek-bench") as amqp_url:
        async with fresh_database(PG, prefix="statusek_bench") as db_url:
            result = await measure(args, amqp_url, db_url)
    print(json.dumps(result) if args.json else report(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
