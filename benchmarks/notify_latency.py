"""Latency from publishing FINISHED to receiving its instance-finished, at a steady command rate.

Publishes instances' (create, STARTED, FINISHED) back to back at `--rate`
commands per second for `--seconds`, to K worker processes on a fresh vhost
and database, and reports the percentiles of FINISHED publish ->
instance-finished received (and of FINISHED publish -> its reply), after a
warm-up second; then the work it cost, which a busy machine distorts less
than latency: the workers' CPU per command while the load ran (utime + stime
from /proc/<pid>/stat, from the first publish to the last notification), their
CPU over the whole run, and the database's transactions (and rows read) per
1,000 commands.

    .venv/bin/python benchmarks/notify_latency.py --rate 300 --seconds 20
    .venv/bin/python benchmarks/notify_latency.py --rate 1500 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import time
import uuid

import aio_pika
import asyncpg

from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    fresh_database,
    fresh_vhost,
    wait_for_worker,
    worker_processes,
)

AMQP = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)
TICK = 0.01


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU of live processes (utime + stime of /proc/<pid>/stat), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # The command name (field 2) may hold spaces: count fields after its closing ')'.
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def percentiles(name: str, values: list[float]) -> str:
    if len(values) < 2:
        return f"{name}: {len(values)} samples"
    q = statistics.quantiles(values, n=100)
    return (
        f"{name} ms (n={len(values)}): p50 {q[49] * 1000:.1f}, p95 {q[94] * 1000:.1f},"
        f" p99 {q[98] * 1000:.1f}, max {max(values) * 1000:.1f}"
    )


async def drive(url: str, rate: float, seconds: float) -> int:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    replies = await channel.declare_queue(exclusive=True)
    events = await channel.declare_queue(exclusive=True)
    await events.bind("statusek.events")
    finished_sent: dict[str, float] = {}
    finish_cids: dict[str, float] = {}
    notified: list[float] = []
    replied: list[float] = []
    warm = time.perf_counter() + 1.0
    last = asyncio.Event()
    expected = 0

    async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        at = finish_cids.pop(m.correlation_id or "", None)
        if at is not None and at >= warm:
            replied.append(time.perf_counter() - at)

    async def on_event(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        if m.type != "instance-finished":
            return
        token = json.loads(m.body)["instance_token"]
        at = finished_sent.pop(token, None)
        if at is not None and at >= warm:
            notified.append(time.perf_counter() - at)
        if not finished_sent and expected:
            last.set()

    await replies.consume(on_reply, no_ack=True)
    await events.consume(on_event, no_ack=True)
    exchange = await channel.get_exchange("statusek.commands")
    started = time.perf_counter()
    owed = 0.0
    sent = 0
    next_tick = started
    while time.perf_counter() - started < seconds:
        owed += rate / 3 * TICK
        while owed >= 1:
            owed -= 1
            token = str(uuid.uuid4())
            for key, body in (
                ("create", {"object_name": "2-POINT LINE TASK", "instance_token": token}),
                ("set-status", {"instance_token": token, "status_name": "STARTED"}),
                ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
            ):
                cid = uuid.uuid4().hex
                if body.get("status_name") == "FINISHED":
                    finished_sent[token] = finish_cids[cid] = time.perf_counter()
                await exchange.publish(
                    aio_pika.Message(
                        json.dumps(body).encode(), correlation_id=cid, reply_to=replies.name, message_id=cid
                    ),
                    routing_key=key,
                )
                sent += 1
        next_tick += TICK
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    elapsed = time.perf_counter() - started
    expected = sent // 3
    if finished_sent:
        await asyncio.wait_for(last.wait(), 120)
    print(f"rate asked {rate:.0f}/s, sent {sent} commands in {elapsed:.1f} s ({sent / elapsed:.0f}/s)")
    print(percentiles("FINISHED publish -> instance-finished", notified))
    print(percentiles("FINISHED publish -> reply", replied))
    await connection.close()
    return sent


async def database_work(db_url: str) -> tuple[int, int]:
    """Transactions committed and rows fetched in the benchmark's database so far."""
    conn = await asyncpg.connect(db_url)
    try:
        await asyncio.sleep(1.5)  # statistics reach pg_stat_database within a second
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_fetched FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(row["xact_commit"]), int(row["tup_fetched"])
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300, help="commands per second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with fresh_vhost(AMQP, prefix="statusek-bench") as amqp_url:
        async with fresh_database(PG, prefix="statusek_bench") as db_url:
            env = {
                **os.environ,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_AMQP_URL": amqp_url,
                "STATUSEK_LOG_LEVEL": "WARNING",
                "STATUSEK_OPS_PORT": "0",
            }
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with worker_processes(env, args.workers) as procs:
                await wait_for_worker(amqp_url)
                await asyncio.sleep(1)
                xacts, fetched = await database_work(db_url)
                pids = [p.pid for p in procs]
                loaded = cpu_seconds(pids)
                sent = await drive(amqp_url, args.rate, args.seconds)
                loaded = cpu_seconds(pids) - loaded
                xacts_after, fetched_after = await database_work(db_url)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            per = 1000 / max(sent, 1)
            print(f"worker CPU per command under load: {loaded * per:.3f} ms")
            print(
                f"work per 1,000 commands: worker CPU {cpu * per:.2f} s (whole run, start and stop included),"
                f" database transactions {(xacts_after - xacts) * per:.0f},"
                f" rows fetched {(fetched_after - fetched) * per:.0f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
