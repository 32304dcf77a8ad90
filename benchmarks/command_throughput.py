"""Commands per second through the pipeline, and reply latency.

Publishes N instances' (create, STARTED, FINISHED) back to back, without
waiting for replies, to K worker processes on a fresh vhost and database,
and reports commands/s from first publish to last reply, reply latency
percentiles, and how long until every instance-finished arrived.

    .venv/bin/python benchmarks/command_throughput.py --instances 5000 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid

import aio_pika

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


async def drive(url: str, instances: int) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    replies = await channel.declare_queue(exclusive=True)
    events = await channel.declare_queue(exclusive=True)
    await events.bind("statusek.events")
    sent: dict[str, float] = {}
    latencies: list[float] = []
    codes: dict[str, int] = {}
    finished = 0
    done = asyncio.Event()
    all_finished = asyncio.Event()
    total = instances * 3

    async def on_reply(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        latencies.append(time.perf_counter() - sent[m.correlation_id or ""])
        code = json.loads(m.body)["code"]
        codes[code] = codes.get(code, 0) + 1
        if len(latencies) == total:
            done.set()

    async def on_event(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal finished
        if m.type == "instance-finished":
            finished += 1
            if finished == instances:
                all_finished.set()

    await replies.consume(on_reply, no_ack=True)
    await events.consume(on_event, no_ack=True)
    exchange = await channel.get_exchange("statusek.commands")
    started = time.perf_counter()
    in_flight = []
    for i in range(instances):
        token = str(uuid.uuid4())
        for key, body in (
            ("create", {"object_name": "2-POINT LINE TASK", "instance_token": token}),
            ("set-status", {"instance_token": token, "status_name": "STARTED"}),
            ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
        ):
            cid = uuid.uuid4().hex
            sent[cid] = time.perf_counter()
            # Published in order on one channel; confirms are awaited in bulk.
            in_flight.append(
                asyncio.ensure_future(
                    exchange.publish(
                        aio_pika.Message(
                            json.dumps(body).encode(),
                            correlation_id=cid,
                            reply_to=replies.name,
                            message_id=cid,
                        ),
                        routing_key=key,
                    )
                )
            )
        if len(in_flight) >= 300:
            await asyncio.gather(*in_flight)
            in_flight.clear()
        if (i + 1) % 1000 == 0:
            print(f"  published {3 * (i + 1)} commands", flush=True)
    await asyncio.gather(*in_flight)
    published = time.perf_counter() - started
    await asyncio.wait_for(done.wait(), 600)
    replied = time.perf_counter() - started
    await asyncio.wait_for(all_finished.wait(), 600)
    notified = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    print(f"commands: {total}, reply codes: {codes}")
    print(f"published in {published:.2f} s (publisher confirms, 300 in flight)")
    print(f"last reply after {replied:.2f} s: {total / replied:,.0f} commands/s")
    print(
        f"reply latency ms: p50 {q[49] * 1000:.1f}, p95 {q[94] * 1000:.1f}, p99 {q[98] * 1000:.1f},"
        f" max {latencies[-1] * 1000:.1f}"
    )
    print(f"all {instances} instance-finished received after {notified:.2f} s")
    await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with fresh_vhost(AMQP, prefix="statusek-bench") as amqp_url:
        async with fresh_database(PG, prefix="statusek_bench") as db_url:
            env = {
                **os.environ,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_AMQP_URL": amqp_url,
                "STATUSEK_LOG_LEVEL": "WARNING",
            }
            with worker_processes(env, args.workers):
                await wait_for_worker(amqp_url)
                await asyncio.sleep(1)
                await drive(amqp_url, args.instances)


if __name__ == "__main__":
    asyncio.run(main())
