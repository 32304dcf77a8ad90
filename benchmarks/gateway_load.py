"""HTTP requests per second through `statusek gateway`, and their latency, at C keep-alive connections.

Starts a worker and a gateway (`statusek gateway`, a process of this checkout)
on a fresh vhost and database, or drives a gateway already running (--gateway
URL: nothing is started, and its instances stay). Each of C connections is one
aiohttp session holding one keep-alive connection, and runs, as fast as the
answers come, per instance: POST /instance/create, POST /status/setStatus
STARTED, POST /status/setStatus FINISHED. An op is one HTTP request; a request
counts when it started after the warm-up and ended within the run. An answer
other than HTTP 200 with `status: true` is an error, counted by its message.

For each C it prints ops/s, latency percentiles and the CPU each process
spent per op over the run (gateway, worker, broker, Postgres, this load
generator, and the rest of the machine), which a shared, noisy machine
distorts less than ops/s. By default it runs C = 8, then C = 32:

    .venv/bin/python benchmarks/gateway_load.py
    .venv/bin/python benchmarks/gateway_load.py --connections 8 32 --seconds 20 --rounds 3
    .venv/bin/python benchmarks/gateway_load.py --gateway http://127.0.0.1:8080 --connections 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

try:
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]

from statusek.testing import (
    LOCAL_ADMIN_DATABASE_URL,
    LOCAL_AMQP_URL,
    free_ports,
    fresh_database,
    fresh_vhost,
    wait_for_worker,
    window_stage_totals,
    window_stages_between,
    worker_processes,
)

AMQP = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
PG = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)
TASK = "2-POINT LINE TASK"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU time of the processes involved --------------------------------------------------------------


def process_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` on this machine (None when it cannot be told)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
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


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK  # less idle and iowait


@dataclass(frozen=True)
class Roles:
    """The pids whose CPU is reported, by role (a role without pids is not measured)."""

    pids: dict[str, list[int]]

    def sample(self) -> dict[str, dict[int, float]]:
        sample = {
            role: {p: s for pid in pids for p, s in process_tree(pid).items()}
            for role, pids in self.pids.items()
        }
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sample["load"] = {os.getpid(): usage.ru_utime + usage.ru_stime}
        sample["machine"] = {0: machine_busy()}
        return sample


def cpu_per_op(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], ops: int) -> str:
    spent = {
        role: sum(seconds - before[role].get(pid, 0.0) for pid, seconds in after[role].items())
        for role in after
    }
    spent["other"] = spent.pop("machine") - sum(spent.values())
    per = 1000 / max(ops, 1)
    return ", ".join(f"{role} {seconds * per:.2f}" for role, seconds in spent.items())


# --- the load ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the connections saw: latency of each request counted, and the errors."""

    measure_from: float
    measure_to: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, started: float, ended: float, error: str | None) -> None:
        if started < self.measure_from or ended > self.measure_to:
            return
        if error is None:
            self.latencies.append(ended - started)
        else:
            self.errors[error] += 1


async def post(
    session: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The answer's JSON, and None, or why it is an error."""
    try:
        async with session.post(path, json=body) as response:
            text = await response.text()
            if response.status != 200:
                return {}, f"HTTP {response.status} on {path}: {text[:120]}"
            answer: dict[str, Any] = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return {}, f"{type(e).__name__} on {path}: {e}"
    if answer.get("status") is not True:
        return answer, f"{path}: {answer.get('message')}"
    return answer, None


async def connection(base: str, authorization: str | None, run: Run) -> None:
    """One keep-alive connection creating instances and setting STARTED and FINISHED until the end."""
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        base, connector=connector, timeout=timeout, headers=headers(authorization)
    ) as session:
        while time.perf_counter() < run.measure_to:
            started = time.perf_counter()
            answer, error = await post(session, "/instance/create", {"object_name": TASK})
            run.record(started, time.perf_counter(), error)
            token = answer.get("data", {}).get("instance_token") if error is None else None
            if token is None:
                await asyncio.sleep(0.05)  # an error: do not spin on it
                continue
            for status in ("STARTED", "FINISHED"):
                started = time.perf_counter()
                _, error = await post(
                    session, "/status/setStatus", {"instance_token": token, "status_name": status}
                )
                run.record(started, time.perf_counter(), error)
                if error is not None:
                    break


def headers(authorization: str | None) -> dict[str, str]:
    return {"Authorization": authorization} if authorization is not None else {}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def stages_line(stages: dict[str, tuple[float, float]]) -> str:
    """The workers' mean stage times: `queued` per command, the others per window."""
    commands = stages["queued"][1]
    windows = stages["apply"][1]
    if not windows:
        return "no window"
    means = ", ".join(
        f"{stage} {seconds * 1000 / count:.2f}" for stage, (seconds, count) in stages.items() if count
    )
    return f"{means} ({windows:.0f} windows of {commands / windows:.1f} commands)"


async def measure(
    base: str,
    authorization: str | None,
    connections: int,
    warmup: float,
    seconds: float,
    roles: Roles,
    ops_ports: list[int],
) -> None:
    now = time.perf_counter()
    run = Run(now + warmup, now + warmup + seconds)
    tasks = [asyncio.create_task(connection(base, authorization, run)) for _ in range(connections)]
    await asyncio.sleep(max(0.0, run.measure_from - time.perf_counter()))
    before = roles.sample()
    stages_before = window_stage_totals(ops_ports)
    await asyncio.sleep(max(0.0, run.measure_to - time.perf_counter()))
    after = roles.sample()
    stages = window_stages_between(stages_before, window_stage_totals(ops_ports))
    await asyncio.gather(*tasks)
    ops = len(run.latencies) + sum(run.errors.values())
    line = f"C={connections}: {ops / seconds:,.0f} ops/s ({ops} in {seconds:g} s)"
    if len(run.latencies) >= 2:
        q = statistics.quantiles(run.latencies, n=100)
        line += (
            f", latency ms p50 {ms(q[49])}, p95 {ms(q[94])}, p99 {ms(q[98])}, max {ms(max(run.latencies))}"
        )
    line += f", errors {sum(run.errors.values())}"
    print(line, flush=True)
    print(f"  CPU ms per op: {cpu_per_op(before, after, ops)}", flush=True)
    if ops_ports:
        print(f"  worker stages, ms (mean): {stages_line(stages)}", flush=True)
    for error, count in run.errors.most_common(5):
        print(f"  error x{count}: {error}", flush=True)


# --- starting a worker and a gateway -----------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`statusek gateway` on 127.0.0.1:`port`, stopped with SIGTERM afterwards."""
    gateway_env = {
        # Basic authentication publishes as each caller, which takes a broker user with the
        # impersonator tag; the benchmark's user is the local broker's, so nobody is asked.
        "STATUSEK_GATEWAY_AUTH": "none",
        **env,
        "STATUSEK_HTTP_HOST": "127.0.0.1",
        "STATUSEK_HTTP_PORT": str(port),
    }
    process = subprocess.Popen([sys.executable, "-m", "statusek", "gateway"], env=gateway_env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_for_gateway(
    base: str, authorization: str | None, process: subprocess.Popen[bytes] | None
) -> None:
    """Until POST /about answers 200 (within 60 s)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(base, headers=headers(authorization)) as session:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post("/about", json={}) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway at {base} did not answer POST /about within 60 s")
            await asyncio.sleep(0.2)


async def drive(
    args: argparse.Namespace,
    base: str,
    authorization: str | None,
    roles: Roles,
    started: str,
    ops_ports: list[int] | None = None,
) -> None:
    print(
        f"gateway {base} ({started}); load on {args.loop}; an op is one HTTP request: per connection create, "
        f"setStatus STARTED, setStatus FINISHED in turn; {args.seconds:g} s per run after "
        f"{args.warmup:g} s of warm-up",
        flush=True,
    )
    for round_ in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {round_}", flush=True)
        for connections in args.connections:
            await measure(base, authorization, connections, args.warmup, args.seconds, roles, ops_ports or [])


def variable(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32], metavar="C")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every C this many times")
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start")
    parser.add_argument("--gateway", help="drive this running gateway (its base URL); start nothing")
    parser.add_argument("--user", help="HTTP Basic user, for a gateway that authenticates")
    parser.add_argument("--password", default="", help="HTTP Basic password")
    parser.add_argument(
        "--env",
        type=variable,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for the worker and gateway started (repeatable), e.g. STATUSEK_UVLOOP=false",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop" if uvloop is not None else "asyncio",
        help="this load generator's event loop (uvloop by default: the load takes less of the machine)",
    )
    return parser.parse_args()


async def run(args: argparse.Namespace) -> None:
    authorization = aiohttp.encode_basic_auth(args.user, args.password) if args.user else None
    broker = listener_pid(urlsplit(AMQP).port or 5672)
    postgres = listener_pid(urlsplit(PG).port or 5432)
    shared = {"broker": [broker] if broker else [], "postgres": [postgres] if postgres else []}
    if args.gateway:
        base = args.gateway.rstrip("/")
        await wait_for_gateway(base, authorization, None)
        running = listener_pid(urlsplit(base).port or 80)
        await drive(
            args, base, authorization, Roles({"gateway": [running] if running else [], **shared}), "running"
        )
        return
    with fresh_vhost(AMQP, prefix="statusek-bench") as amqp_url:
        async with fresh_database(PG, prefix="statusek_bench") as db_url:
            env = {
                **os.environ,
                "STATUSEK_DATABASE_URL": db_url,
                "STATUSEK_AMQP_URL": amqp_url,
                "STATUSEK_LOG_LEVEL": "WARNING",
                "STATUSEK_OPS_PORT": "0",
                **dict(args.env),
            }
            # The gateway's port and the workers' ops ports (for their stage metrics) at once: all differ.
            port, *ops_ports = free_ports(1 + args.workers)
            with worker_processes(env, args.workers, ops_ports) as workers:
                await wait_for_worker(amqp_url)
                with gateway_process(env, port) as gateway:
                    base = f"http://127.0.0.1:{port}"
                    await wait_for_gateway(base, authorization, gateway)
                    await asyncio.sleep(1)
                    roles = Roles({"gateway": [gateway.pid], "worker": [w.pid for w in workers], **shared})
                    started = f"started: 1 gateway, {args.workers} worker(s), fresh vhost and database"
                    await drive(args, base, authorization, roles, started, ops_ports)


def main() -> None:
    args = arguments()
    if args.loop == "uvloop":
        if uvloop is None:
            raise SystemExit("--loop uvloop: uvloop is not installed")
        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
