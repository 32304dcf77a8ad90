"""CPU per request of `statusek.Client` itself: what the gateway's AMQP side costs, without HTTP.

Starts a worker on a fresh vhost and database, then runs C concurrent loops on
one shared Client (as the gateway shares one), each creating an instance and
setting STARTED and FINISHED, until N requests are answered, after a warm-up
of 300 per loop. Prints requests/s (mostly the machine's load) and this
process's CPU milliseconds per request (mostly the client's own work):

    .venv/bin/python benchmarks/client_rpc.py --connections 32 --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time

from statusek import Client
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
TASK = "2-POINT LINE TASK"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def lifecycles(client: Client, until: int, done: list[int]) -> None:
    """Instances created, STARTED and FINISHED one after the other until `done[0]` reaches `until`."""
    while done[0] < until:
        token = await client.create(TASK)
        await client.set_status(token, "STARTED")
        await client.set_status(token, "FINISHED")
        done[0] += 3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32, help="concurrent loops on the one client")
    parser.add_argument("--requests", type=int, default=3000)
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
            with worker_processes(env, 1):
                await wait_for_worker(amqp_url)
                async with await Client.connect(amqp_url) as client:
                    warm = [0]
                    await asyncio.gather(
                        *(lifecycles(client, 300 * args.connections, warm) for _ in range(args.connections))
                    )
                    done = [0]
                    cpu, started = cpu_seconds(), time.perf_counter()
                    await asyncio.gather(
                        *(lifecycles(client, args.requests, done) for _ in range(args.connections))
                    )
                    cpu, elapsed = cpu_seconds() - cpu, time.perf_counter() - started
    print(
        f"C={args.connections}: {done[0]} requests in {elapsed:.1f} s, {done[0] / elapsed:,.0f} requests/s,"
        f" client CPU {1000 * cpu / done[0]:.3f} ms per request"
    )


if __name__ == "__main__":
    asyncio.run(main())
