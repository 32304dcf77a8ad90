"""Commands/s for 1, 2 and 4 worker replicas, each a container capped at --cpus, next to one uncapped.

This machine's few cores are shared by the broker, the database, the load and
the workers, so adding uncapped replicas shows little. Here every replica is a
container of local/statusek:test limited with `docker run --cpus`: while the
cap is what limits a replica, more replicas should give more commands/s, as far
as the commands spread over them (STATUSEK_COMMAND_PARTITIONS queues, by the
AMQP header `instance_token`).

Each run gets a fresh vhost and a fresh database; the benchmark waits until
every replica's GET /readyz answers 200, warms up, then publishes per instance
`create`, `set-status` STARTED and `set-status` FINISHED (persistent, with
publisher confirms, no reply_to, header `instance_token`), and counts
commands / (first publish -> last `instance-finished` received on a queue bound
to `statusek.events`). Each replica's CPU over that window comes from its
cgroup (cpuacct usage and CFS throttling), the broker's and Postgres' from
/proc; commands per replica from its /metrics. Containers run with host
networking, so they reach the broker and the database on 127.0.0.1; each gets
its own STATUSEK_OPS_PORT. Every container started is removed at the end, on
failure and on Ctrl-C too. The uncapped reference is one container of the same
image without --cpus (`--uncapped host`: a `statusek worker` of this venv).

Before each run it waits (--quiet-wait) for the machine to be idle, and it
reports `other`: CPU taken by anything else meanwhile. A run whose instances
did not all finish normally (no progress for --stall seconds), or whose
replies were not all SUCCESS, or that left messages in the vhost's queues,
gets an INCOMPLETE line. On 2 cores, 1 replica at 0.5 cpus already needs
about as much broker + Postgres + load CPU as the machine has left, so the
curve with room for 4 replicas is the one with a smaller cap:

    deploy/docker/build-images.sh --force worker   # local/statusek:test from this checkout
    .venv/bin/python benchmarks/replica_scaling.py --partitions 4 --instances 2000 --rounds 2
    .venv/bin/python benchmarks/replica_scaling.py --partitions 4 --cpus 0.1 --uncapped none \
        --instances 3000 --warmup 100 --rounds 3  # short runs swing widely (see docs/development.md)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc

from statusek.logs import configure as configure_logging
from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    RabbitAdmin,
    fresh_database,
    fresh_vhost,
    worker_processes,
)

AMQP = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)
IMAGE = "local/statusek:test"
LABEL = "statusek.benchmark"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1

Uncapped = Literal["container", "host", "none"]


# --- reading CPU time -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used, and CFS periods / throttled periods (cgroups only) at one moment."""

    seconds: float
    periods: int = 0
    throttled: int = 0


def _cgroup_dirs(pid: int) -> tuple[Path | None, Path | None]:
    """(cpuacct dir, cpu dir) of `pid`'s cgroup, v1; on v2 both are the unified dir."""
    cpuacct = cpu = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if controllers == "" and cpuacct is None:  # cgroup v2
            unified = Path("/sys/fs/cgroup") / path.lstrip("/")
            if (unified / "cpu.stat").exists():
                cpuacct = cpu = unified
        if "cpuacct" in names:
            cpuacct = Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
        if "cpu" in names:
            cpu = Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
    return cpuacct, cpu


def _stat_fields(path: Path) -> dict[str, int]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        fields[key] = int(value)
    return fields


def cgroup_sample(cpuacct: Path, cpu: Path) -> CpuSample:
    if (cpuacct / "cpuacct.usage").exists():  # v1
        seconds = int((cpuacct / "cpuacct.usage").read_text()) / 1e9
    else:  # v2
        seconds = _stat_fields(cpuacct / "cpu.stat")["usage_usec"] / 1e6
    stat = _stat_fields(cpu / "cpu.stat")
    return CpuSample(seconds, stat.get("nr_periods", 0), stat.get("nr_throttled", 0))


def process_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (its socket inode in /proc/net/tcp*, then in /proc/*/fd)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
    return None


def process_tree(root: int | None) -> dict[int, float]:
    """CPU seconds of `root` and its descendants (Postgres' backends are children of the postmaster)."""
    if root is None:
        return {}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        found[pid] = process_seconds(pid)
        todo += children.get(pid, [])
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class HostSample:
    broker: dict[int, float]
    postgres: dict[int, float]
    machine: tuple[float, float]
    load: float  # this process (the load generator)

    @classmethod
    def now(cls, broker_pid: int | None, postgres_pid: int | None) -> HostSample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            process_tree(broker_pid),
            process_tree(postgres_pid),
            machine_busy(),
            usage.ru_utime + usage.ru_stime,
        )


async def left_in_queues(admin: RabbitAdmin, vhost: str, wait: float = 12.0) -> dict[str, tuple[int, int]]:
    """Messages in the vhost's queues once they drained, or after `wait` seconds.

    Quorum queues report their depth with the broker's statistics, every 5 s by
    default: a look right after the last notification may still show the load.
    """
    deadline = time.monotonic() + wait
    while True:
        queues = await asyncio.to_thread(admin.list_queues, vhost)
        if not any(ready + unacked for ready, unacked in queues.values()) or time.monotonic() > deadline:
            return queues
        await asyncio.sleep(1.0)


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that started in between counts from 0; one that ended in between is lost (rare here).
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


# --- replicas ---------------------------------------------------------------------------------------


@dataclass
class Replica:
    """One worker: a container (capped or not) or a host process; answers on its own ops port."""

    name: str
    ops_port: int
    cpus: float | None
    container: str | None = None
    pid: int | None = None
    cgroup: tuple[Path, Path] | None = None

    def sample(self) -> CpuSample:
        if self.cgroup is not None:
            return cgroup_sample(*self.cgroup)
        if self.pid is not None:
            return CpuSample(process_seconds(self.pid))
        raise RuntimeError(f"{self.name}: no cgroup and no pid to read CPU from")

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.ops_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return int(answer.status), answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def commands_answered(self) -> dict[str, int]:
        """statusek_commands_total on its /metrics, summed per reply code (all routing keys)."""
        _, text = self.get("/metrics")
        codes: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("statusek_commands_total{"):
                found = re.search(r'code="([^"]*)"', line)
                code = found.group(1) if found else "?"
                codes[code] = codes.get(code, 0) + int(float(line.rsplit(None, 1)[1]))
        return codes

    def windows_and_handovers(self) -> tuple[int, int]:
        """Windows of commands applied so far and partitions handed over, from its /metrics."""
        _, text = self.get("/metrics")
        found = {"statusek_window_size_count": 0, "statusek_partition_handovers_total": 0}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in found:
                found[name] = int(float(value))
        return found["statusek_window_size_count"], found["statusek_partition_handovers_total"]


def docker(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def container_logs(container: str, lines: int = 30) -> str:
    done = subprocess.run(
        ["docker", "logs", "--tail", str(lines), container],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


@contextlib.contextmanager
def containers(
    image: str, count: int, cpus: float | None, env: dict[str, str], first_port: int, run_id: str
) -> Iterator[list[Replica]]:
    """`count` worker containers on the host network, removed afterwards whatever happens."""
    started: list[str] = []
    try:
        replicas = []
        tag = "uncapped" if cpus is None else f"{count}x{cpus:g}cpu"
        for i in range(count):
            port = first_port + i
            name = f"statusek-scaling-{run_id}-{tag}-{i + 1}"
            # `-e NAME` takes the value from docker's environment: the URLs stay off the command line.
            run_env = {**os.environ, **env, "STATUSEK_OPS_PORT": str(port)}
            names = [*env, "STATUSEK_OPS_PORT"]
            limits = [] if cpus is None else [f"--cpus={cpus:g}"]
            container = docker(
                "run",
                "--detach",
                "--name",
                name,
                "--network",
                "host",
                "--label",
                f"{LABEL}=replica_scaling",
                "--label",
                f"{LABEL}.run={run_id}",
                *limits,
                *(arg for n in names for arg in ("--env", n)),
                image,
                "worker",
                env=run_env,
            )
            started.append(container)
            pid = int(docker("inspect", "--format", "{{.State.Pid}}", container))
            cpuacct, cpu = _cgroup_dirs(pid)
            cgroup = (cpuacct, cpu) if cpuacct is not None and cpu is not None else None
            replicas.append(Replica(name, port, cpus, container=container, cgroup=cgroup))
        yield replicas
    finally:
        if started:
            docker("rm", "--force", *started, check=False)
        # Belt and braces: anything of this run that the list missed (e.g. interrupted mid-`run`).
        leftover = docker("ps", "-aq", "--filter", f"label={LABEL}.run={run_id}", check=False).split()
        if leftover:
            docker("rm", "--force", *leftover, check=False)


@contextlib.contextmanager
def host_worker(env: dict[str, str], port: int) -> Iterator[list[Replica]]:
    """One `statusek worker` process of this checkout's venv, uncapped."""
    with worker_processes({**os.environ, **env, "STATUSEK_OPS_PORT": str(port)}, 1) as procs:
        yield [Replica("host-process", port, None, pid=procs[0].pid)]


async def wait_ready(replicas: list[Replica], timeout: float) -> None:
    """Until every replica's /readyz answers 200; a container that exits fails at once with its logs."""
    deadline = time.monotonic() + timeout
    waiting = list(replicas)
    while waiting:
        for replica in list(waiting):
            if replica.container is not None:
                state = docker("inspect", "--format", "{{.State.Status}}", replica.container)
                if state != "running":
                    raise RuntimeError(f"{replica.name} is {state}:\n{container_logs(replica.container)}")
            try:
                status, _ = await asyncio.to_thread(replica.get, "/readyz")
            except OSError:
                continue
            if status == 200:
                waiting.remove(replica)
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(r.name for r in waiting)
            raise TimeoutError(f"not ready within {timeout:g} s: {names}")
        await asyncio.sleep(0.3)


# --- the load ---------------------------------------------------------------------------------------


class Progress:
    """One line on stderr, rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        line = f"[{self.label}] {text}"
        if self.tty:
            print(f"\r\033[K{line}", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


@dataclass
class Load:
    commands: int  # of the instances that finished
    seconds: float
    published_after: float
    missing: int  # instances with no instance-finished when the load stalled
    reasons: dict[str, int]  # finish reasons of those that finished


IN_FLIGHT = 1000  # unconfirmed commands the load keeps in flight


async def drive(amqp_url: str, instances: int, progress: Progress, timeout: float, stall: float) -> Load:
    """Publish `instances` x (create, STARTED, FINISHED); time until every instance-finished arrived.

    Gives up when no instance finished for `stall` seconds after the last publish (a lost or
    rejected command would otherwise show only when the model's instance_timeout fires): the
    instances left are reported as missing.
    """
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        listen = await connection.channel()
        events = await listen.declare_queue(exclusive=True)
        await events.bind("statusek.events")
        tokens = [str(uuid.uuid4()) for _ in range(instances)]
        waiting = set(tokens)
        all_finished = asyncio.Event()
        last_finished = 0.0
        reasons: dict[str, int] = {}

        async def on_event(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal last_finished
            if m.type != "instance-finished":
                return
            body = json.loads(m.body)
            token = body.get("instance_token")
            if token in waiting:  # a notification may come twice (at least once)
                waiting.discard(token)
                reason = str(body.get("reason"))
                reasons[reason] = reasons.get(reason, 0) + 1
                last_finished = time.perf_counter()
                if not waiting:
                    all_finished.set()

        await events.consume(on_event, no_ack=True)
        exchange = await channel.get_exchange("statusek.commands")
        total = 3 * instances
        published = 0

        def report(final: bool = False) -> None:
            progress.show(
                f"published {published}/{total} commands, finished {instances - len(waiting)}/{instances}"
                f" instances, {time.perf_counter() - started:.1f} s",
                final=final,
            )

        started = time.perf_counter()
        # A sliding window of unconfirmed publishes, not batches waited for in turn: with capped
        # replicas the broker confirms slowly, and stop-and-go publishing would measure the load.
        room = asyncio.Semaphore(IN_FLIGHT)

        def confirmed(_: asyncio.Future[Any]) -> None:
            nonlocal published
            published += 1
            room.release()

        pending: list[asyncio.Future[Any]] = []
        for token in tokens:
            for key, body in (
                ("create", {"object_name": "2-POINT LINE TASK", "instance_token": token}),
                ("set-status", {"instance_token": token, "status_name": "STARTED"}),
                ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
            ):
                message = aio_pika.Message(
                    json.dumps(body).encode(),
                    content_type="application/json",
                    message_id=uuid.uuid4().hex,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={"instance_token": token},
                )
                await room.acquire()
                # Published in order on one channel: the futures only wait for the confirms.
                future = asyncio.ensure_future(exchange.publish(message, routing_key=key))
                future.add_done_callback(confirmed)
                pending.append(future)
                if len(pending) % IN_FLIGHT == 0:
                    report()
        await asyncio.gather(*pending)  # raises a failed publish
        published_after = time.perf_counter() - started
        deadline = time.monotonic() + timeout
        while not all_finished.is_set():
            report()
            if time.monotonic() > deadline:
                report(final=True)
                raise TimeoutError(
                    f"{len(waiting)} of {instances} instances not finished within {timeout:g} s"
                )
            if time.perf_counter() - max(last_finished, started + published_after) > stall:
                progress.show(f"stalled: {len(waiting)} instance(s) unfinished for {stall:g} s", final=True)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_finished.wait(), 0.5)
        report(final=True)
        done = instances - len(waiting)
        return Load(3 * done, last_finished - started, published_after, len(waiting), reasons)
    finally:
        await connection.close()


# --- one run ----------------------------------------------------------------------------------------


@dataclass
class ReplicaResult:
    name: str
    cpu_cores: float  # CPU seconds / wall seconds of the measured window
    throttled: float | None  # share of CFS periods in which the cap stopped it (None: no cap)
    commands: int  # answered during the measured load
    codes: dict[str, int] = field(default_factory=dict)  # the same, per reply code
    windows: int = 0  # transactions of commands (windows) taken during the measured load
    handovers: int = 0  # partitions it stepped back from during the measured load


@dataclass
class RunResult:
    label: str
    replicas: int
    cpus: float | None
    commands: int
    seconds: float
    commands_per_s: float
    published_after: float
    broker_cores: float
    postgres_cores: float
    load_cores: float
    machine_cores: float
    other_cores: float  # the machine less workers, broker, postgres and load: whatever else ran
    busy_before: float | None  # cores busy just before the run, with nothing of ours running
    worker_ms_per_command: float  # CPU of all replicas per command
    missing: int = 0  # instances not finished when the load stalled (see --stall)
    reasons: dict[str, int] = field(default_factory=dict)  # finish reasons
    queues_after: dict[str, int] = field(default_factory=dict)  # messages left in the vhost's queues
    workers: list[ReplicaResult] = field(default_factory=list)
    ratio: float | None = None


async def wait_quiet(below: float, patience: float, label: str) -> float:
    """Wait until the machine, with nothing of ours running, uses less than `below` cores; returns
    the last reading. Other people's work on a shared machine would take CPU from the replicas."""
    deadline = time.monotonic() + patience
    while True:
        before, started = machine_busy()[0], time.perf_counter()
        await asyncio.sleep(2)
        busy = (machine_busy()[0] - before) / (time.perf_counter() - started)
        if busy < below or time.monotonic() > deadline:
            if busy >= below:
                print(
                    f"[{label}] the machine is still busy ({busy:.2f} cores) after {patience:g} s: going on",
                    file=sys.stderr,
                    flush=True,
                )
            return busy
        print(f"[{label}] waiting for a quieter machine: {busy:.2f} cores busy", file=sys.stderr, flush=True)
        await asyncio.sleep(3)


async def run(
    label: str,
    count: int,
    cpus: float | None,
    how: Literal["container", "host"],
    args: argparse.Namespace,
    run_id: str,
) -> RunResult:
    admin = RabbitAdmin()
    broker_pid = listener_pid(urlsplit(AMQP).port or 5672)
    postgres_pid = listener_pid(urlsplit(PG).port or 5432)
    idle = await wait_quiet(args.quiet_below, args.quiet_wait, label) if args.quiet_wait > 0 else None
    with fresh_vhost(AMQP, prefix="statusek-scaling", admin=admin) as amqp_url:
        async with fresh_database(PG, prefix="statusek_scaling") as db_url:
            env = {
                "STATUSEK_AMQP_URL": amqp_url,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_COMMAND_PARTITIONS": str(args.partitions),
                "STATUSEK_LOG_LEVEL": "WARNING",
                **dict(kv.split("=", 1) for kv in args.env),
            }
            started = (
                containers(args.image, count, cpus, env, args.ops_port, run_id)
                if how == "container"
                else host_worker(env, args.ops_port)
            )
            with started as replicas:
                progress = Progress(label)
                progress.show(f"starting {count} worker(s)", final=True)
                await wait_ready(replicas, args.start_timeout)
                if args.warmup:
                    await drive(amqp_url, args.warmup, Progress(f"{label} warm-up"), args.timeout, args.stall)
                await asyncio.sleep(args.settle)
                answered_before = [await asyncio.to_thread(r.commands_answered) for r in replicas]
                windows_before = [await asyncio.to_thread(r.windows_and_handovers) for r in replicas]
                cpu_before = [r.sample() for r in replicas]
                host_before = HostSample.now(broker_pid, postgres_pid)
                window = time.perf_counter()
                load = await drive(amqp_url, args.instances, progress, args.timeout, args.stall)
                window = time.perf_counter() - window
                cpu_after = [r.sample() for r in replicas]
                host_after = HostSample.now(broker_pid, postgres_pid)
                answered = [
                    {
                        code: n - before.get(code, 0)
                        for code, n in (await asyncio.to_thread(r.commands_answered)).items()
                        if n - before.get(code, 0)
                    }
                    for r, before in zip(replicas, answered_before, strict=True)
                ]
                windows_after = [await asyncio.to_thread(r.windows_and_handovers) for r in replicas]
                windows = [
                    (a[0] - b[0], a[1] - b[1]) for a, b in zip(windows_after, windows_before, strict=True)
                ]
                queues = await left_in_queues(admin, unquote(urlsplit(amqp_url).path[1:]))
            # CPU shares are over the sampled window (a little longer than first publish -> last event).
            workers = [
                ReplicaResult(
                    r.name,
                    (after.seconds - before.seconds) / window,
                    (after.throttled - before.throttled) / (after.periods - before.periods)
                    if after.periods > before.periods
                    else None,
                    sum(n.values()),
                    n,
                    *w,
                )
                for r, before, after, n, w in zip(
                    replicas, cpu_before, cpu_after, answered, windows, strict=True
                )
            ]
            broker = _delta(host_before.broker, host_after.broker) / window
            postgres = _delta(host_before.postgres, host_after.postgres) / window
            load_cores = (host_after.load - host_before.load) / window
            machine = (host_after.machine[0] - host_before.machine[0]) / window
            return RunResult(
                label=label,
                replicas=count,
                cpus=cpus,
                commands=load.commands,
                seconds=load.seconds,
                commands_per_s=load.commands / load.seconds,
                published_after=load.published_after,
                missing=load.missing,
                reasons=load.reasons,
                queues_after={
                    q: ready + unacked for q, (ready, unacked) in queues.items() if ready + unacked
                },
                broker_cores=broker,
                postgres_cores=postgres,
                load_cores=load_cores,
                machine_cores=machine,
                other_cores=machine - broker - postgres - load_cores - sum(w.cpu_cores for w in workers),
                busy_before=idle,
                worker_ms_per_command=1000 * sum(w.cpu_cores for w in workers) * window / load.commands,
                workers=workers,
            )


# --- output -----------------------------------------------------------------------------------------


def table(
    results: list[RunResult], rounds: dict[str, list[float]], partitions: int, image: str, revision: str
) -> str:
    lines = [
        f"image {image} (revision {revision}), STATUSEK_COMMAND_PARTITIONS={partitions}, {CORES} cores",
        "",
        f"{'replicas':>8}  {'cpus':>4}  {'commands/s':>10}  {'ratio':>5}  {'seconds':>7}  {'ms/cmd':>6}"
        f"  {'workers':>7}  {'broker':>6}  {'pg':>4}  {'load':>4}  {'other':>5}  {'machine':>7}"
        "  per replica: cores (throttled) commands/windows",
    ]
    several = any(len(v) > 1 for v in rounds.values())
    for r in results:
        cpus = "none" if r.cpus is None else f"{r.cpus:g}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        per = "  ".join(
            f"{w.cpu_cores:.2f}"
            + ("" if w.throttled is None else f" ({w.throttled:.0%})")
            + f" {w.commands}/{w.windows}"
            + (f" ({w.handovers} hand-overs)" if w.handovers else "")
            for w in r.workers
        )
        workers = sum(w.cpu_cores for w in r.workers)
        lines.append(
            f"{r.replicas:>8}  {cpus:>4}  {r.commands_per_s:>10,.0f}  {ratio:>5}  {r.seconds:>7.1f}"
            f"  {r.worker_ms_per_command:>6.2f}  {workers:>7.2f}  {r.broker_cores:>6.2f}"
            f"  {r.postgres_cores:>4.2f}  {r.load_cores:>4.2f}  {r.other_cores:>5.2f}"
            f"  {r.machine_cores:>5.2f}/{CORES}  {per}"
        )
        normal = {k: v for k, v in r.reasons.items() if k != "ALL_MANDATORY_STATUSES_ARE_SET"}
        codes: dict[str, int] = {}
        for w in r.workers:
            for code, n in w.codes.items():
                codes[code] = codes.get(code, 0) + n
        if r.missing or normal or set(codes) - {"SUCCESS"} or r.queues_after:
            lines.append(
                f"{'':>8}  {'':>4}  INCOMPLETE: {r.missing} instance(s) unfinished,"
                f" finish reasons {r.reasons}, reply codes {codes}, left in queues {r.queues_after}"
            )
        if several:
            each = ", ".join(f"{v:,.0f}" for v in rounds[r.label])
            lines.append(f"{'':>8}  {'':>4}  rounds: {each} commands/s")
    lines += [
        "",
        *(["each row: its configuration's best round (least disturbed by others)."] if several else []),
        "ratio: commands/s over that of 1 capped replica; ms/cmd: CPU ms of all replicas per command.",
        "CPU columns are cores (CPU seconds / wall seconds over the measured load): workers (all",
        "replicas), broker (the process on the AMQP port), pg (the postmaster on the database port and",
        "its backends), load (this process), other (the machine less those: anything else running),",
        "machine (all of it, of the cores there are). throttled: share of CFS periods in which the cpus",
        "cap stopped the replica; commands/windows: answered by that replica during the measured load,",
        "and the windows (one transaction each) they took.",
    ]
    return "\n".join(lines)


def image_revision(image: str) -> str:
    revision = docker(
        "image",
        "inspect",
        "--format",
        '{{index .Config.Labels "org.opencontainers.image.revision"}}',
        image,
        check=False,
    )
    return revision or "unknown"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=3000, help="instances per run (3 commands each)")
    parser.add_argument("--partitions", type=int, default=4, help="STATUSEK_COMMAND_PARTITIONS")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4], help="capped replica counts")
    parser.add_argument("--cpus", type=float, default=0.5, help="docker run --cpus of each capped replica")
    parser.add_argument(
        "--uncapped",
        choices=["container", "host", "none"],
        default="container",
        help="the uncapped reference: a container of the image, a `statusek worker` of this venv, or none",
    )
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--warmup", type=int, default=300, help="instances before measuring, per run")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between warm-up and load")
    parser.add_argument("--ops-port", type=int, default=19464, help="first STATUSEK_OPS_PORT")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run's load may take")
    parser.add_argument(
        "--stall", type=float, default=60.0, help="give up waiting after this many seconds without progress"
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.3,
        help="before each run, wait until the machine uses fewer cores than this (others' work)",
    )
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="how long at most; 0: do not wait")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure each configuration this many times; report the best"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every replica (repeatable), e.g. STATUSEK_PREFETCH=128",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = parser.parse_args()
    configure_logging("WARNING")  # fresh_database's migration lines would bury the progress line

    # SIGTERM as Ctrl-C: the main task is cancelled and every `finally` removes what it started.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    uses_image = args.uncapped == "container" or args.replicas
    revision = image_revision(args.image) if uses_image else "-"
    if uses_image and revision == "unknown" and not docker("image", "ls", "-q", args.image, check=False):
        sys.exit(f"{args.image} is missing: run deploy/docker/build-images.sh worker")
    run_id = secrets.token_hex(3)
    plan: list[tuple[str, int, float | None, Literal["container", "host"]]] = []
    if args.uncapped != "none":
        plan.append((f"1 uncapped {args.uncapped}", 1, None, args.uncapped))
    plan += [(f"{n} x {args.cpus:g} cpus", n, args.cpus, "container") for n in args.replicas]
    # Rounds go back and forth (1 2 4, 4 2 1, ...) so that a trend in others' load favours no one.
    runs: list[RunResult] = []
    for round_ in range(args.rounds):
        for label, n, cpus, how in plan if round_ % 2 == 0 else plan[::-1]:
            runs.append(await run(label, n, cpus, how, args, run_id))
    # Per configuration its best round: the one others' work on the machine disturbed least.
    best: dict[str, RunResult] = {}
    for r in runs:
        if r.label not in best or r.commands_per_s > best[r.label].commands_per_s:
            best[r.label] = r
    results = [best[label] for label, *_ in plan]
    one = next((r for r in results if r.replicas == 1 and r.cpus is not None), None)
    for r in runs:
        r.ratio = r.commands_per_s / one.commands_per_s if one is not None else None
    rounds = {label: [r.commands_per_s for r in runs if r.label == label] for label, *_ in plan}
    if args.json:
        print(
            json.dumps(
                {
                    "image": args.image,
                    "revision": revision,
                    "partitions": args.partitions,
                    "instances": args.instances,
                    "cores": CORES,
                    "uncapped": args.uncapped,
                    "rounds": args.rounds,
                    "best": [asdict(r) for r in results],
                    "runs": [asdict(r) for r in runs],
                },
                indent=2,
            )
        )
    else:
        print(table(results, rounds, args.partitions, args.image, revision))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted: its containers, vhost and database are removed")
