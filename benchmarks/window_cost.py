"""What one command window costs the worker: commands sent one at a time, each in a window of its own.

Publishes an instance's create, STARTED and FINISHED of `2-POINT LINE TASK` (with the
`instance_token` header and a `reply_to`), each only once the reply to the previous command has
arrived, so every window holds one command, whatever else runs on the machine; a subscriber
takes the notifications. Prints the latency from publish to reply (p50/p95/p99), and the CPU per
command of the worker and of the Postgres backends serving it (utime + stime from /proc/<pid>/stat
over the measured commands; the backends are those of the benchmark's database, read from
pg_stat_activity after the warm-up). A busy machine stretches
the latency, but the CPU a window costs much less: this is the figure to compare two commits or
settings by, on a machine shared with other work.

    .venv/bin/python benchmarks/window_cost.py --commands 1500
    STATUSEK_UVLOOP=false .venv/bin/python benchmarks/window_cost.py --commands 1500

With `--instructions` the worker runs under valgrind's callgrind, counting from the first measured
command to the last, and the figure is the instructions the worker executed per command (every
thread, user space: not the kernel's work on its behalf). Another process on the machine does not
change that count: two runs of the same code agree within about 1 %, where the CPU time above
moves by a third, so it can tell apart changes of a few per cent. The worker runs some 50 times
slower under valgrind, so a few hundred commands do:

    .venv/bin/python benchmarks/window_cost.py --commands 300 --instructions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aio_pika
import aio_pika.abc
import asyncpg
import structlog

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
WARM_UP = 150  # commands before the measured ones: connections, plans, caches
TIMEOUT = 30.0  # seconds a command's reply may take before the run fails


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a live process (utime + stime of /proc/<pid>/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces: count fields after its closing ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of proc(5)


def percentile_ms(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted seconds, in ms."""
    return round(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] * 1000, 2)


async def database_backends(db_url: str) -> list[int]:
    """The pids of the Postgres backends connected to the benchmark's database, but this one's."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


def total_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds of the pids that are still alive (a backend may close meanwhile)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            total += cpu_seconds(pid)
    return total


class InstructionCount:
    """Counts a worker's instructions under callgrind (`--instr-atstart=no`) between start and stop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = 0  # the worker's, once started

    def wrapper(self) -> list[str]:
        out = self.directory / "callgrind.out"
        return [
            "valgrind",
            "--quiet",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
        ]

    def _control(self, *option: str) -> None:
        subprocess.run(["callgrind_control", *option, str(self.pid)], check=True, capture_output=True)

    def start(self) -> None:
        self._control("--instr=on")

    def stop(self) -> None:
        """Dump what was counted since `start` (a file per thread) and stop counting."""
        self._control("--dump")
        self._control("--instr=off")

    def counted(self) -> int:
        """Instructions in the dumps of `stop` (`callgrind.out.N`; the one written at exit has no N)."""
        total = 0
        for dump in self.directory.glob("callgrind.out.*"):
            for line in dump.read_text().splitlines():
                if line.startswith("summary:"):
                    total += int(line.split()[1])
        return total


async def drive(
    url: str, db_url: str, commands: int, pid: int, count: InstructionCount | None = None
) -> dict[str, float]:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        events = await channel.declare_queue(exclusive=True)
        await events.bind("statusek.events")
        replies = await channel.declare_queue(exclusive=True)
        arrived: asyncio.Queue[str] = asyncio.Queue()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.put_nowait(message.correlation_id or "")

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pass

        await replies.consume(on_reply, no_ack=True)
        await events.consume(on_event, no_ack=True)
        exchange = await channel.get_exchange("statusek.commands")
        latencies: list[float] = []
        cpu_at = started = database_at = 0.0
        backends: list[int] = []
        for k in range(WARM_UP + commands):
            if k == WARM_UP:
                backends = await database_backends(db_url)
                database_at = total_cpu_seconds(backends)
                cpu_at, started = cpu_seconds(pid), time.perf_counter()
                if count is not None:
                    count.start()
            step = k % 3
            if step == 0:
                token = str(uuid.uuid4())
            key, body = (
                ("create", {"object_name": "2-POINT LINE TASK", "instance_token": token})
                if step == 0
                else (
                    "set-status",
                    {"instance_token": token, "status_name": ("STARTED", "FINISHED")[step - 1]},
                )
            )
            sent = time.perf_counter()
            message_id = uuid.uuid4().hex
            await exchange.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),
                    content_type="application/json",
                    message_id=message_id,
                    correlation_id=message_id,
                    headers={"instance_token": token},
                    reply_to=replies.name,
                ),
                routing_key=key,
            )
            if await asyncio.wait_for(arrived.get(), TIMEOUT) != message_id:
                raise RuntimeError("a reply to another command than the one sent last")
            if k >= WARM_UP:
                latencies.append(time.perf_counter() - sent)
        seconds = time.perf_counter() - started
        if count is not None:
            count.stop()
        cpu = cpu_seconds(pid) - cpu_at
        database = total_cpu_seconds(backends) - database_at
    finally:
        await connection.close()
    ordered = sorted(latencies)
    return {
        "commands": commands,
        "commands_per_s": round(commands / seconds, 1),
        "cpu_ms_per_command": round(cpu * 1000 / commands, 3),
        "postgres_cpu_ms_per_command": round(database * 1000 / commands, 3),
        "p50_ms": percentile_ms(ordered, 50),
        "p95_ms": percentile_ms(ordered, 95),
        "p99_ms": percentile_ms(ordered, 99),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=1500, help="measured commands (after a warm-up)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the lines")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="run the worker under valgrind's callgrind and count its instructions per command",
    )
    args = parser.parse_args()
    if args.instructions:
        missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
        if missing:
            parser.error(f"--instructions needs {' and '.join(missing)} (apt-get install valgrind)")
    # The migrations of fresh_database log to stdout, which the figures own; only warnings matter here.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    with fresh_vhost(AMQP, prefix="statusek-bench-window") as amqp_url:
        async with fresh_database(PG, prefix="statusek_bench_window") as db_url:
            env = {
                **os.environ,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_AMQP_URL": amqp_url,
                "STATUSEK_LOG_LEVEL": "WARNING",
                "STATUSEK_OPS_PORT": "0",
            }
            with tempfile.TemporaryDirectory(prefix="statusek-callgrind-") as directory:
                count = InstructionCount(Path(directory)) if args.instructions else None
                wrapper = count.wrapper() if count is not None else []
                with worker_processes(env, 1, wrapper=wrapper) as (worker,):
                    # Under valgrind the worker starts some 10 times slower.
                    await wait_for_worker(amqp_url, consuming=True, timeout=300 if count else 60)
                    if count is not None:
                        count.pid = worker.pid
                    figures = await drive(amqp_url, db_url, args.commands, worker.pid, count)
                if count is not None:
                    figures["instructions_per_command"] = round(count.counted() / args.commands)
    if args.json:
        print(json.dumps(figures))
        return
    if args.instructions:
        print(
            f"{figures['commands']:,} commands one at a time, the worker under callgrind:"
            f" {figures['instructions_per_command']:,.0f} instructions per command"
        )
        return
    print(
        f"{figures['commands']:,} commands one at a time:"
        f" {figures['commands_per_s']:,.0f} commands/s, CPU per command: worker"
        f" {figures['cpu_ms_per_command']:.3f} ms, Postgres {figures['postgres_cpu_ms_per_command']:.3f} ms;"
        f" publish -> reply p50 {figures['p50_ms']:.2f} ms,"
        f" p95 {figures['p95_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
