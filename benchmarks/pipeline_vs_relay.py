"""Commands per second and finish latency: the statusek pipeline beside a broker-only relay.

The relay is what RabbitMQ alone costs for the same flow on this machine: the same commands (same bodies,
headers and persistence, published with confirms) go to a quorum queue, and a consumer in another
process takes them (prefetch 512, manual acks in batches after its notifications are confirmed)
and publishes one notification per command to a fanout exchange, `instance-finished` for each
FINISHED. The pipeline is the real thing: `statusek worker` processes on a fresh vhost and database
apply `create`, `set-status` STARTED and `set-status` FINISHED of `2-POINT LINE TASK` (client-chosen
tokens, no reply_to, the `instance_token` header on every command) and announce them from the
outbox.

For each system, after a short warm-up: commands/s at full load (first publish to last expected
notification), then the latency from publishing FINISHED to receiving `instance-finished`
(p50/p95/p99) at full load, at half of the commands/s that system just reached (paced publishing)
and at a fixed 300 commands/s, the CPU the worker(s) or the relay consumer used per command in
each run (utime + stime from /proc/<pid>/stat, from the run's first publish to its last
notification), where a command's time went inside the workers (the means of the stages of
`statusek_window_stage_seconds` over the run, from each worker's /metrics), and their peak RSS
(VmHWM).
Each system gets its own vhost (and database), removed afterwards. Progress goes to stderr.

    .venv/bin/python benchmarks/pipeline_vs_relay.py --instances 5000 --paced-seconds 10
    .venv/bin/python benchmarks/pipeline_vs_relay.py --instances 2000 --workers 3 --json
    .venv/bin/python benchmarks/pipeline_vs_relay.py --partitions 2   # STATUSEK_COMMAND_PARTITIONS

The commands/s of a paced run run to its last notification, so they fall below the offered rate
when the system lags (the table shows both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc
import structlog

from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    RabbitAdmin,
    free_ports,
    fresh_database,
    fresh_vhost,
    window_stage_totals,
    window_stages_between,
    worker_processes,
)

N = TypeVar("N", int, float)

HERE = os.path.abspath(__file__)
AMQP = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)

OBJECT_NAME = "2-POINT LINE TASK"
PIPELINE_COMMANDS = "statusek.commands"
PIPELINE_EVENTS = "statusek.events"
RELAY_COMMANDS = "bench.commands"
RELAY_EVENTS = "bench.events"
COMMAND_KEYS = ("create", "set-status", "ping", "cancel")
PREFETCH = 512  # the worker's default STATUSEK_PREFETCH
WINDOW = 256  # the worker's default STATUSEK_WINDOW: deliveries settled together
FIXED_RATE = 300.0  # commands/s of the third latency run
WARM_UP_INSTANCES = 300
MAX_IN_FLIGHT = 2000  # unconfirmed publishes; bounds the publisher's memory at full load
STALL_SECONDS = 60.0  # no new notification for this long: the run failed


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def command_bodies(token: str) -> list[tuple[str, bytes, bool]]:
    """(routing key, body, is FINISHED) of one instance's commands, in the order they must apply."""
    return [
        (key, json.dumps(body).encode(), body.get("status_name") == "FINISHED")
        for key, body in (
            ("create", {"object_name": OBJECT_NAME, "instance_token": token}),
            ("set-status", {"instance_token": token, "status_name": "STARTED"}),
            ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
        )
    ]


def command_message(body: bytes, token: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=uuid.uuid4().hex,
        # Partitioned workers route by this header; the relay gets it too so both carry the same bytes.
        headers={"instance_token": token},
    )


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a live process, in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def cpu_seconds(pids: Sequence[int]) -> float:
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


def percentile_ms(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in ms."""
    if not ordered:
        return None
    return round(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] * 1000, 2)


# --- progress on stderr ------------------------------------------------------------------------------


class Progress:
    """A redrawn bar on a terminal; on a pipe or file, one plain line per run start and end."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.total = 0

    def note(self, text: str) -> None:
        self.clear()
        say(text)

    def start(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        if self.tty:
            self.draw(0)
        else:
            say(f"{label}: {total:,} commands ...")

    def draw(self, done: int, width: int = 30) -> None:
        if not self.tty:
            return
        share = done / self.total if self.total else 1.0
        filled = min(width, round(width * share))
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {share:4.0%}"
            f" {self.label} {done:,}/{self.total:,}\x1b[K",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def finish(self, summary: str) -> None:
        self.clear()
        say(f"{self.label}: {summary}")

    def clear(self) -> None:
        if self.tty:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)


# --- one measured run ----------------------------------------------------------------------------------


@dataclass
class Run:
    """The notifications expected from a set of instances, and when they came."""

    label: str
    tokens: set[str]
    expected: int
    sent_finished: dict[str, float] = field(default_factory=dict)  # token -> perf_counter at publish
    latencies: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # message ids: the pipeline's relay sends at least once
    duplicates: int = 0
    first_publish: float = 0.0
    last_publish: float = 0.0
    last_notification: float = 0.0
    cpu_started: float = 0.0  # CPU seconds of the measured processes when the run began
    cpu_used: float = 0.0  # and what they used until its last notification
    # The workers' stage totals (`window_stage_totals`) when the run began, and what the run added.
    stages_started: dict[str, tuple[float, float]] = field(default_factory=dict)
    stages_used: dict[str, tuple[float, float]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Harness:
    """Publishes commands to one system and hears its notifications, on two connections.

    Separate connections so that the broker's flow control of a fast publisher never delays the
    subscriber's deliveries, which would inflate the latencies measured.
    """

    def __init__(self, label: str, vhost: str, progress: Progress) -> None:
        self.label = label
        self.vhost = vhost
        self.progress = progress
        self.run: Run | None = None
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.failures: list[BaseException] = []
        self.connections: list[aio_pika.abc.AbstractConnection] = []
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        # The system's processes (workers, or the relay consumer) whose CPU each run reports.
        self.pids: list[int] = []
        # The workers' ops ports, whose /metrics say where a command's time went in each run.
        self.ops_ports: list[int] = []

    async def open(self, url: str, commands: str, events: str) -> None:
        publishing = await aio_pika.connect(url)
        self.connections.append(publishing)
        channel = await publishing.channel(publisher_confirms=True)
        self.exchange = await channel.get_exchange(commands)
        subscribing = await aio_pika.connect(url)
        self.connections.append(subscribing)
        sub_channel = await subscribing.channel()
        queue = await sub_channel.declare_queue(exclusive=True)
        await queue.bind(events)
        await queue.consume(self.on_notification, no_ack=True)

    async def close(self) -> None:
        for connection in reversed(self.connections):
            await connection.close()

    async def on_notification(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        run = self.run
        if run is None:
            return
        token = message.headers.get("instance_token")
        if isinstance(token, bytes):
            token = token.decode()
        if not isinstance(token, str):
            token = json.loads(message.body).get("instance_token")
        # Global statuses and a previous run's stragglers are not this run's.
        if token not in run.tokens:
            return
        key = message.message_id or f"{token}:{message.type}"
        if key in run.seen:
            run.duplicates += 1
            return
        run.seen.add(key)
        if message.type == "instance-finished":
            sent = run.sent_finished.get(token)
            if sent is not None:
                run.latencies.append(now - sent)
        if len(run.seen) >= run.expected and not run.done.is_set():
            run.last_notification = now
            run.done.set()

    def publish(self, run: Run, key: str, body: bytes, token: str, finished: bool) -> None:
        """Sends one command now and leaves its confirm to a task, so the caller is never held by it.

        Ordering: each task reaches aiormq's channel lock (FIFO) without suspending first, so tasks
        created in order write their frames in order on the one channel.
        """
        assert self.exchange is not None
        now = time.perf_counter()
        if not run.first_publish:
            run.first_publish = now
        run.last_publish = now
        if finished:
            run.sent_finished[token] = now
        task = asyncio.create_task(self.exchange.publish(command_message(body, token), routing_key=key))
        self.in_flight.add(task)
        task.add_done_callback(self._confirmed)

    def _confirmed(self, task: asyncio.Task[Any]) -> None:
        self.in_flight.discard(task)
        self.slots.release()
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            self.failures.append(failure)

    async def full_load(self, instances: int, name: str) -> dict[str, Any]:
        """Every command as fast as the broker confirms them (at most MAX_IN_FLIGHT unconfirmed)."""
        tokens = [str(uuid.uuid4()) for _ in range(instances)]
        run = self.begin(name, tokens)
        ticker = asyncio.create_task(self.tick(run))
        try:
            for token in tokens:
                for key, body, finished in command_bodies(token):
                    await self.slots.acquire()
                    self.publish(run, key, body, token, finished)
            await self.settle(run)
        finally:
            ticker.cancel()
        return self.figures(run)

    async def paced(self, rate: float, seconds: float, name: str) -> dict[str, Any]:
        """`rate` commands/s for `seconds`, command k due at start + k / rate.

        The timeline is fixed: a late wake-up publishes everything that is due at once instead of
        shifting the rest, so the offered rate is the one asked for. Each instance's three
        commands are consecutive on the timeline, so they stay in order.
        """
        instances = max(1, round(rate * seconds / 3))
        tokens = [str(uuid.uuid4()) for _ in range(instances)]
        commands = [(token, *command) for token in tokens for command in command_bodies(token)]
        run = self.begin(name, tokens)
        ticker = asyncio.create_task(self.tick(run))
        loop = asyncio.get_running_loop()
        worst_lag = 0.0
        try:
            start = loop.time()
            k = 0
            while k < len(commands):
                due = start + k / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                while k < len(commands) and start + k / rate <= loop.time():
                    await self.slots.acquire()
                    worst_lag = max(worst_lag, loop.time() - (start + k / rate))
                    token, key, body, finished = commands[k]
                    self.publish(run, key, body, token, finished)
                    k += 1
            await self.settle(run)
        finally:
            ticker.cancel()
        result = self.figures(run)
        result["target_commands_per_s"] = round(rate, 1)
        result["offered_commands_per_s"] = round(
            (len(commands) - 1) / (run.last_publish - run.first_publish) if len(commands) > 1 else 0.0, 1
        )
        result["max_schedule_lag_ms"] = round(worst_lag * 1000, 2)
        return result

    def begin(self, name: str, tokens: list[str]) -> Run:
        run = Run(f"{self.label} {name}", set(tokens), expected=3 * len(tokens))
        run.cpu_started = cpu_seconds(self.pids)
        run.stages_started = window_stage_totals(self.ops_ports)
        self.run = run
        self.progress.start(run.label, run.expected)
        return run

    async def tick(self, run: Run) -> None:
        while True:
            self.progress.draw(len(run.seen))
            await asyncio.sleep(0.2)

    async def settle(self, run: Run) -> None:
        """Waits for every confirm and every expected notification; fails on a stall."""
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        if self.failures:
            raise RuntimeError(f"{len(self.failures)} publishes failed, first: {self.failures[0]!r}")
        count, since = -1, time.monotonic()
        while not run.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), 1.0)
            if len(run.seen) != count:
                count, since = len(run.seen), time.monotonic()
            elif time.monotonic() - since > STALL_SECONDS:
                depths = RabbitAdmin().list_queues(self.vhost)
                raise RuntimeError(
                    f"{run.label}: {count:,} of {run.expected:,} notifications,"
                    f" none for {STALL_SECONDS:.0f} s;"
                    f" queues (ready, unacked): {depths}"
                )
        run.cpu_used = cpu_seconds(self.pids) - run.cpu_started
        ended = window_stage_totals(self.ops_ports)
        run.stages_used = window_stages_between(run.stages_started, ended)
        self.run = None
        seconds = run.last_notification - run.first_publish
        self.progress.finish(f"{run.expected / seconds:,.0f} commands/s ({seconds:.2f} s)")

    def figures(self, run: Run) -> dict[str, Any]:
        seconds = run.last_notification - run.first_publish
        ordered = sorted(run.latencies)
        return {
            "instances": len(run.tokens),
            "commands": run.expected,
            "seconds": round(seconds, 3),
            "commands_per_s": round(run.expected / seconds, 1),
            "publish_seconds": round(run.last_publish - run.first_publish, 3),
            "p50_ms": percentile_ms(ordered, 50),
            "p95_ms": percentile_ms(ordered, 95),
            "p99_ms": percentile_ms(ordered, 99),
            "max_ms": percentile_ms(ordered, 100),
            # Of the worker(s) or the relay consumer, from the run's start to its last notification.
            "cpu_ms_per_command": round(run.cpu_used * 1000 / run.expected, 3) if self.pids else None,
            "duplicate_notifications": run.duplicates,
            # Mean ms per stage in the workers: `queued` per delivery, the others per window.
            "stage_ms": {
                stage: round(seconds * 1000 / count, 2) if count else None
                for stage, (seconds, count) in run.stages_used.items()
            },
            "windows": int(run.stages_used["apply"][1]) if run.stages_used else None,
        }


async def measure(
    label: str,
    url: str,
    commands: str,
    events: str,
    args: argparse.Namespace,
    progress: Progress,
    pids: Sequence[int],
    ops_ports: Sequence[int] = (),
) -> dict[str, Any]:
    """Warm-up, full load, then half of the full-load rate and FIXED_RATE, on one system."""
    harness = Harness(label, unquote(urlsplit(url).path[1:]), progress)
    harness.pids = list(pids)
    harness.ops_ports = list(ops_ports)
    await harness.open(url, commands, events)
    try:
        # Unmeasured: first connections, Postgres caches and plans, the queue's first segment.
        await harness.full_load(min(WARM_UP_INSTANCES, args.instances), "warm-up")
        full = await harness.full_load(args.instances, "full-load")
        half = await harness.paced(full["commands_per_s"] / 2, args.paced_seconds, "50% of max")
        fixed = await harness.paced(FIXED_RATE, args.paced_seconds, f"{FIXED_RATE:.0f}/s")
    finally:
        await harness.close()
    return {"full_load": full, "half_of_max": half, "fixed_rate": fixed}


async def wait_for_consumers(
    url: str, wanted: dict[str, int], processes: Sequence[subprocess.Popen[bytes]], timeout: float = 120
) -> None:
    """Until each queue has its number of consumers; fails at once if a process exits."""
    connection = await aio_pika.connect(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            for p in processes:
                if p.poll() is not None:
                    raise RuntimeError(f"process {p.args!r} exited with {p.returncode} before consuming")
            counts: dict[str, int] = {}
            for name in wanted:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    counts[name] = queue.declaration_result.consumer_count or 0
                    await channel.close()
                except aio_pika.exceptions.ChannelClosed:
                    counts[name] = 0  # not declared yet: a failed passive declare closed the channel
            if all(counts[name] >= n for name, n in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumers {counts}, wanted {wanted}, after {timeout:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


# --- the two systems -----------------------------------------------------------------------------------


async def relay_phase(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    with fresh_vhost(AMQP, prefix="statusek-bench-relay") as url:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            commands = await channel.declare_exchange(
                RELAY_COMMANDS, aio_pika.ExchangeType.DIRECT, durable=True
            )
            # What statusek.commands is, less the dead-lettering that nothing here triggers.
            queue = await channel.declare_queue(
                RELAY_COMMANDS,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
            )
            for key in COMMAND_KEYS:
                await queue.bind(commands, routing_key=key)
            await channel.declare_exchange(RELAY_EVENTS, aio_pika.ExchangeType.FANOUT, durable=True)
        finally:
            await connection.close()
        # The URL goes by environment, not argv, where `ps` would show its password.
        consumer = subprocess.Popen(
            [sys.executable, HERE, "--relay-consumer"],
            env={**os.environ, "STATUSEK_AMQP_URL": url},
            stdout=subprocess.PIPE,
        )
        try:
            progress.note("relay: consumer process started")
            await wait_for_consumers(url, {RELAY_COMMANDS: 1}, [consumer])
            runs = await measure("relay", url, RELAY_COMMANDS, RELAY_EVENTS, args, progress, [consumer.pid])
            rss = peak_rss_kib(consumer.pid)
        finally:
            consumer.terminate()
            try:
                out, _ = consumer.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                consumer.kill()
                out, _ = consumer.communicate()
        stats = json.loads(out) if consumer.returncode == 0 and out.strip() else None
    return {**runs, "peak_rss_kib": [rss], "consumer": stats}


async def pipeline_phase(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    with fresh_vhost(AMQP, prefix="statusek-bench-pipeline") as url:
        async with fresh_database(PG, prefix="statusek_bench_pipeline") as db_url:
            env = {
                **os.environ,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_AMQP_URL": url,
                "STATUSEK_LOG_LEVEL": "WARNING",
                "STATUSEK_COMMAND_PARTITIONS": str(args.partitions),
                "STATUSEK_OPS_HOST": "127.0.0.1",
            }
            # A port each: replicas on one host (and other people's workers) would fight over 9464.
            ops_ports = free_ports(args.workers)
            with worker_processes(env, args.workers, ops_ports) as procs:
                progress.note(f"pipeline: {args.workers} worker(s) started, {args.partitions} partition(s)")
                # Every replica consumes queries: all of them are up (their outbox relays too).
                await wait_for_consumers(url, {"statusek.queries": args.workers, PIPELINE_COMMANDS: 1}, procs)
                runs = await measure(
                    "pipeline",
                    url,
                    PIPELINE_COMMANDS,
                    PIPELINE_EVENTS,
                    args,
                    progress,
                    [p.pid for p in procs],
                    ops_ports,
                )
                rss = [peak_rss_kib(p.pid) for p in procs]
                vhost = unquote(urlsplit(url).path[1:])
                depths = RabbitAdmin().list_queues(vhost)
    return {
        **runs,
        "peak_rss_kib": rss,
        # Rule rejections (commands without reply_to) and invalid input would land here.
        "rejected": depths.get("statusek.rejected", (0, 0))[0],
        "dead_lettered": depths.get("statusek.dead-letter", (0, 0))[0],
    }


# --- the relay consumer (its own process) -------------------------------------------------------------


async def relay_consumer(url: str) -> dict[str, int]:
    """Consumes commands, publishes a notification each with confirms, acks each batch once confirmed.

    Settles like the worker: a batch of what has arrived (at most WINDOW), its notifications
    confirmed, then one multiple-ack. Counts commands seen out of order for their instance, which
    would mean the publisher broke the per-instance order the pipeline depends on.
    """
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    stats = {"consumed": 0, "batches": 0, "out_of_order": 0}
    next_step: dict[str, int] = {}
    connection = await aio_pika.connect(url)
    try:
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=PREFETCH)
        publishing = await connection.channel(publisher_confirms=True)
        events = await publishing.get_exchange(RELAY_EVENTS)
        deliveries: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

        async def on_delivery(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            deliveries.put_nowait(message)

        queue = await consuming.get_queue(RELAY_COMMANDS)
        consumer_tag = await queue.consume(on_delivery)

        def notification(message: aio_pika.abc.AbstractIncomingMessage) -> aio_pika.Message:
            command = json.loads(message.body)
            token = command["instance_token"]
            status = command.get("status_name")
            step = {None: 0, "STARTED": 1, "FINISHED": 2}.get(status, -1)
            if next_step.get(token, 0) != step:
                stats["out_of_order"] += 1
            if step == 2:
                next_step.pop(token, None)
            else:
                next_step[token] = step + 1
            kind = "instance-finished" if step == 2 else "status-changed" if status else "instance-created"
            # About the size of the worker's notifications, so both move the same bytes.
            body = {
                "instance_token": token,
                "object_name": OBJECT_NAME,
                "model_version": 1,
                "status_name": status,
                "status_type": "MANDATORY",
                "seq": step + 1,
                "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "labels": {},
                "actor": "anonymous",
            }
            return aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                type=kind,
                message_id=f"{token}:{step + 1}",
                headers={"object_name": OBJECT_NAME, "instance_token": token},
            )

        stopping = asyncio.create_task(stop.wait())
        while True:
            getting = asyncio.create_task(deliveries.get())
            await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            batch = [getting.result()]
            while len(batch) < WINDOW and not deliveries.empty():
                batch.append(deliveries.get_nowait())
            await asyncio.gather(*(events.publish(notification(m), routing_key="") for m in batch))
            await batch[-1].ack(multiple=True)
            stats["consumed"] += len(batch)
            stats["batches"] += 1
        await queue.cancel(consumer_tag)
    finally:
        await connection.close()
    return stats


# --- report --------------------------------------------------------------------------------------------


RUNS = (
    ("full_load", "full load"),
    ("half_of_max", "50% of max"),
    ("fixed_rate", f"{FIXED_RATE:.0f} commands/s"),
)


# The workers' stages (`statusek_window_stage_seconds`), in the order a command passes them.
STAGE_ROWS = (
    ("queued", "queued for its window"),
    ("apply", "window applied"),
    ("answer", "window answered"),
    ("ack", "window acked"),
)


def ratio(pipeline: float | None, relay: float | None) -> float | None:
    return round(pipeline / relay, 3) if pipeline is not None and relay else None


def table(report: dict[str, Any]) -> str:
    relay, pipeline = report["relay"], report["pipeline"]
    rows: list[tuple[str, str, str, str]] = [("", "relay", "pipeline", "pipeline/relay")]

    def num(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    for key, title in RUNS:
        r, p = relay[key], pipeline[key]
        if "target_commands_per_s" in r:
            title += (
                f" (offered {num(r['offered_commands_per_s'], 0)} / {num(p['offered_commands_per_s'], 0)})"
            )
        rows.append((title, "", "", ""))
        rows.append(
            (
                "  commands/s",
                num(r["commands_per_s"], 0),
                num(p["commands_per_s"], 0),
                num(ratio(p["commands_per_s"], r["commands_per_s"]), 3),
            )
        )
        for q in ("p50", "p95", "p99"):
            rows.append(
                (
                    f"  FINISHED -> instance-finished {q} ms",
                    num(r[f"{q}_ms"]),
                    num(p[f"{q}_ms"]),
                    num(ratio(p[f"{q}_ms"], r[f"{q}_ms"]), 2),
                )
            )
        rows.append(
            (
                "  CPU ms per command (consumer / workers)",
                num(r["cpu_ms_per_command"], 3),
                num(p["cpu_ms_per_command"], 3),
                num(ratio(p["cpu_ms_per_command"], r["cpu_ms_per_command"]), 2),
            )
        )
        if p.get("windows"):
            each = f"{p['windows']:,} ({p['commands'] / p['windows']:.1f})"
            rows.append(("  workers: windows (deliveries each)", "", each, ""))
            for stage, what in STAGE_ROWS:
                rows.append((f"  workers: {what} ms (mean)", "", num(p["stage_ms"][stage], 2), ""))
    relay_rss, pipeline_rss = report["peak_rss_mib"]["relay"], report["peak_rss_mib"]["pipeline"]
    rows.append(
        (
            "peak RSS MiB (VmHWM, max)",
            num(relay_rss),
            num(pipeline_rss),
            num(ratio(pipeline_rss, relay_rss), 2),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"{report['instances']:,} instances ({3 * report['instances']:,} commands) at full load,"
        f" paced runs of {report['paced_seconds']:g} s, {report['workers']} worker(s),"
        f" {report['partitions']} partition(s)",
        "",
    ]
    for row in rows:
        lines.append(
            row[0].ljust(widths[0])
            + "".join(f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:], strict=True))
        )
    each = ", ".join(num(k / 1024 if k else None) for k in pipeline["peak_rss_kib"])
    lines += [
        "",
        f"pipeline workers' peak RSS MiB: {each}; rejected {pipeline['rejected']},"
        f" dead-lettered {pipeline['dead_lettered']}",
    ]
    if relay["consumer"]:
        c = relay["consumer"]
        lines.append(
            f"relay consumer: {c['consumed']:,} commands in {c['batches']:,} batches,"
            f" {c['out_of_order']} out of order"
        )
    return "\n".join(lines)


def peak_mib(kib: list[int | None]) -> float | None:
    known = [k for k in kib if k is not None]
    return round(max(known) / 1024, 1) if known else None


async def main(args: argparse.Namespace) -> None:
    # statusek's logs (the migrations of fresh_database) print to stdout by default, which --json
    # owns; only their warnings matter here.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    progress = Progress()
    relay = await relay_phase(args, progress)
    pipeline = await pipeline_phase(args, progress)
    report: dict[str, Any] = {
        "instances": args.instances,
        "paced_seconds": args.paced_seconds,
        "workers": args.workers,
        "partitions": args.partitions,
        "relay": relay,
        "pipeline": pipeline,
        "ratio_pipeline_over_relay": {
            key: ratio(pipeline[key]["commands_per_s"], relay[key]["commands_per_s"]) for key, _ in RUNS
        },
        "peak_rss_mib": {
            "relay": peak_mib(relay["peak_rss_kib"]),
            "pipeline": peak_mib(pipeline["peak_rss_kib"]),
        },
    }
    print(json.dumps(report, indent=2) if args.json else table(report))


def positive(kind: Callable[[str], N]) -> Callable[[str], N]:
    def convert(text: str) -> N:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return convert


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--instances", type=positive(int), default=5000, help="instances of the full-load run"
    )
    parser.add_argument(
        "--paced-seconds", type=positive(float), default=10.0, help="duration of each paced run"
    )
    parser.add_argument("--workers", type=positive(int), default=1, help="statusek worker processes")
    parser.add_argument("--partitions", type=positive(int), default=1, help="STATUSEK_COMMAND_PARTITIONS")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    # The relay's consumer process: this file run again, its vhost in STATUSEK_AMQP_URL.
    parser.add_argument("--relay-consumer", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.relay_consumer:
        print(json.dumps(asyncio.run(relay_consumer(os.environ["STATUSEK_AMQP_URL"]))), flush=True)
    else:
        asyncio.run(main(arguments))
