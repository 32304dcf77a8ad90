"""Throw-away RabbitMQ vhosts and Postgres databases, for tests and benchmarks.

    with backing_services() as services:
        with fresh_vhost(services.amqp_url, admin=services.rabbit) as amqp_url:
            async with fresh_database(services.database_url) as db_url:
                ...

`backing_services` gives the broker and database server to use: the local ones
(`STATUSEK_TEST_AMQP_URL`, `STATUSEK_TEST_DATABASE_URL`, by default on
127.0.0.1), or a RabbitMQ and a Postgres container of the images built by
deploy/docker/build-images.sh (`STATUSEK_TEST_BACKEND=containers`, or by itself
when the local services do not answer but Docker does).

Vhosts are made with `rabbitmqctl`, run where the broker is: on this machine
(so the broker must be local, and the caller allowed to run it) or in the
broker's container. Databases are created, migrated and dropped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from statusek.adapters.postgres.migrate import migrate
from statusek.worker.metrics import WINDOW_STAGES

if TYPE_CHECKING:
    from statusek.settings import Settings
    from statusek.worker.worker import Worker

LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_ADMIN_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MANAGEMENT_URL = "http://127.0.0.1:15672/"
RABBITMQ_IMAGE = "local/statusek-rabbitmq:test"
POSTGRES_IMAGE = "local/statusek-postgres:test"

Backend = Literal["local", "containers"]


@dataclass(frozen=True)
class RabbitAdmin:
    """`rabbitmqctl` for the broker under test: this machine's, or the one in `container`."""

    container: str | None = None

    def rabbitmqctl(self, *args: str) -> str:
        """Runs `rabbitmqctl -q ARGS` and returns its output; raises with its stderr on failure."""
        where = ["docker", "exec", self.container] if self.container else []
        done = subprocess.run(
            [*where, "rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def add_vhost(self, vhost: str) -> None:
        self.rabbitmqctl("add_vhost", vhost)

    def delete_vhost(self, vhost: str) -> None:
        self.rabbitmqctl("delete_vhost", vhost)

    def set_permissions(
        self, vhost: str, user: str, configure: str = ".*", write: str = ".*", read: str = ".*"
    ) -> None:
        self.rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)

    def list_queues(self, vhost: str) -> dict[str, tuple[int, int]]:
        """Queue name -> (ready, unacked) messages."""
        out = self.rabbitmqctl(
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--no-table-headers",
        )
        depths = {}
        for line in out.splitlines():
            name, ready, unacked = line.rsplit(None, 2)
            depths[name] = (int(ready), int(unacked))
        return depths


@dataclass(frozen=True)
class Services:
    """A broker and a database server to make vhosts and databases on."""

    backend: Backend
    amqp_url: str  # the broker's default vhost, as a user allowed to make vhosts
    database_url: str  # a database of the server, as a user allowed to create databases
    management_url: str  # the broker's management HTTP API and UI (may answer a little after AMQP)
    rabbit: RabbitAdmin


@contextmanager
def fresh_vhost(
    amqp_url: str, prefix: str = "statusek-test", admin: RabbitAdmin | None = None
) -> Iterator[str]:
    """The URL of a new vhost on the broker of `amqp_url`, deleted afterwards."""
    admin = admin or RabbitAdmin()
    vhost = f"{prefix}-{secrets.token_hex(4)}"
    user = urlsplit(amqp_url).username or "guest"
    admin.add_vhost(vhost)
    try:
        admin.set_permissions(vhost, user)
        yield urlunsplit(urlsplit(amqp_url)._replace(path="/" + quote(vhost, safe="")))
    finally:
        admin.delete_vhost(vhost)


@asynccontextmanager
async def fresh_database(database_url: str, prefix: str = "statusek_test") -> AsyncIterator[str]:
    """The URL of a new, migrated database on the server of `database_url`, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(database_url)._replace(path="/" + name))
    await migrate(url)
    try:
        yield url
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await _drop_database(conn, name)
        finally:
            await conn.close()


async def _drop_database(conn: asyncpg.Connection, name: str, attempts: int = 20) -> None:
    for _ in range(attempts):
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except asyncpg.InsufficientPrivilegeError:
            # FORCE may not terminate an autovacuum worker busy in it for a role that is no
            # superuser; a plain DROP stops that worker itself, once our own sessions are gone.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
                name,
            )
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except asyncpg.ObjectInUseError:
                await asyncio.sleep(0.5)
    raise RuntimeError(f"could not drop database {name} after {attempts} attempts")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """A port free on 127.0.0.1 now."""
    return free_ports(1)[0]


@contextmanager
def worker_processes(
    env: dict[str, str], count: int, ops_ports: Sequence[int] = (), wrapper: Sequence[str] = ()
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` `statusek worker` processes with `env`, stopped with SIGTERM afterwards.

    With `ops_ports`, process i serves /metrics (and its probes) on `ops_ports[i]`; a `wrapper`
    (`valgrind --tool=callgrind ...`) runs each worker under it.
    """
    if ops_ports and len(ops_ports) != count:
        raise ValueError(f"{len(ops_ports)} ops ports for {count} workers")
    envs = [{**env, "STATUSEK_OPS_PORT": str(port)} for port in ops_ports] or [env] * count
    command = [*wrapper, sys.executable, "-m", "statusek", "worker"]
    procs = [subprocess.Popen(command, env=e) for e in envs]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def window_stage_totals(ports: Sequence[int]) -> dict[str, tuple[float, float]]:
    """(seconds, observations) of each `statusek_window_stage_seconds` stage, summed over the workers
    serving /metrics on `ports`."""
    totals = dict.fromkeys(WINDOW_STAGES, (0.0, 0.0))
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "statusek_window_stage_seconds":
                continue
            for sample in family.samples:
                seconds, count = totals[sample.labels["stage"]]
                if sample.name.endswith("_sum"):
                    totals[sample.labels["stage"]] = (seconds + sample.value, count)
                elif sample.name.endswith("_count"):
                    totals[sample.labels["stage"]] = (seconds, count + sample.value)
    return totals


def window_stages_between(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """What each stage added between two `window_stage_totals`."""
    return {
        stage: (seconds - before[stage][0], count - before[stage][1])
        for stage, (seconds, count) in after.items()
    }


# --- choosing and starting the services -------------------------------------------------------------


def choose_backend(
    requested: str | None, local_up: Callable[[], bool], docker_up: Callable[[], bool]
) -> Backend:
    """`local` or `containers` for STATUSEK_TEST_BACKEND=`requested`; unset or empty chooses by itself."""
    if requested == "local":
        return "local"
    if requested == "containers":
        return "containers"
    if requested:
        raise ValueError(f"STATUSEK_TEST_BACKEND must be local or containers, not {requested!r}")
    return "containers" if not local_up() and docker_up() else "local"


@contextmanager
def backing_services(backend: str | None = None) -> Iterator[Services]:
    """The broker and database server of the tests, per STATUSEK_TEST_BACKEND (see the module doc).

    Containers are removed when the block ends.
    """
    amqp_url = os.environ.get("STATUSEK_TEST_AMQP_URL", LOCAL_AMQP_URL)
    database_url = os.environ.get("STATUSEK_TEST_DATABASE_URL", LOCAL_ADMIN_DATABASE_URL)
    chosen = choose_backend(
        backend if backend is not None else os.environ.get("STATUSEK_TEST_BACKEND"),
        local_up=lambda: _accepts(amqp_url, 5672) and _accepts(database_url, 5432),
        docker_up=docker_answers,
    )
    if chosen == "local":
        management_url = os.environ.get("STATUSEK_TEST_MANAGEMENT_URL", LOCAL_MANAGEMENT_URL)
        yield Services("local", amqp_url, database_url, management_url, RabbitAdmin())
    else:
        with _containers() as services:
            yield services


def _accepts(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def docker_answers() -> bool:
    """True when a Docker engine answers."""
    try:
        client = docker_client()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextmanager
def _containers(timeout: float = 120) -> Iterator[Services]:
    # testcontainers is a development dependency: imported only when containers are asked for.
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        # Ryuk, testcontainers' reaper, is an image from a registry, which this machine cannot reach;
        # the containers are removed when the block ends instead.
        testcontainers_config.ryuk_disabled = True
    _require_images(RABBITMQ_IMAGE, POSTGRES_IMAGE)
    rabbit = DockerContainer(RABBITMQ_IMAGE)
    postgres = DockerContainer(POSTGRES_IMAGE).with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    # Published on 127.0.0.1 only, on ports the engine picks (with_bind_ports would bind every interface).
    for container, ports in ((rabbit, (5672, 15672)), (postgres, (5432,))):
        for port in ports:
            container.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    with ExitStack() as stack:
        # Both start before either is waited for, so that their start-ups overlap.
        for container in (rabbit, postgres):
            stack.callback(container.stop)
            container.start()
        amqp_port = rabbit.get_exposed_port(5672)
        pg_port = postgres.get_exposed_port(5432)
        deadline = time.monotonic() + timeout
        for name, container, ready in (
            ("RabbitMQ", rabbit, partial(amqp_answers, amqp_port)),
            ("Postgres", postgres, partial(postgres_answers, pg_port)),
        ):
            while not ready():
                if time.monotonic() > deadline:
                    logs = b"".join(container.get_logs()).decode(errors="replace").splitlines()[-30:]
                    raise TimeoutError(
                        f"the {name} container did not answer in {timeout} s:\n" + "\n".join(logs)
                    )
                time.sleep(0.2)
        yield Services(
            "containers",
            amqp_url=f"amqp://guest:guest@127.0.0.1:{amqp_port}/",
            database_url=f"postgresql://postgres@127.0.0.1:{pg_port}/postgres",
            management_url=f"http://127.0.0.1:{rabbit.get_exposed_port(15672)}/",
            rabbit=RabbitAdmin(rabbit.get_container_id()),
        )


def docker_client() -> Any:
    """A client of the Docker engine (the `docker` package, which testcontainers brings)."""
    import docker  # type: ignore[import-untyped]

    return docker.from_env(timeout=10)


def _require_images(*images: str) -> None:
    client = docker_client()
    try:
        missing = [image for image in images if not client.images.list(name=image)]
    finally:
        client.close()
    if missing:
        # Otherwise the engine would try to pull them from a registry and fail obscurely.
        raise RuntimeError(f"missing image(s) {', '.join(missing)}: run deploy/docker/build-images.sh")


# A published port accepts connections as soon as the container runs (the engine's proxy listens), so
# readiness is the server's own answer: AMQP's Connection.Start, Postgres' AuthenticationOk (trust).


def amqp_answers(port: int) -> bool:
    """True when the broker on 127.0.0.1:`port` opens an AMQP 0-9-1 connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return s.recv(1) == b"\x01"  # a method frame
    except OSError:
        return False


def postgres_answers(port: int) -> bool:
    """True when the server on 127.0.0.1:`port` lets user postgres in without a password."""
    body = (196608).to_bytes(4, "big") + b"user\0postgres\0database\0postgres\0\0"  # protocol 3.0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall((len(body) + 4).to_bytes(4, "big") + body)
            answer = s.recv(9)
            s.sendall(b"X\0\0\0\x04")  # Terminate
            return answer == b"R\0\0\0\x08\0\0\0\0"  # AuthenticationOk
    except OSError:
        return False


@asynccontextmanager
async def running_worker(settings: Settings, *, start_timeout: float = 60) -> AsyncIterator[Worker]:
    """A `Worker` in this event loop, consuming once entered, stopped gracefully on exit."""
    from statusek.worker.worker import Worker

    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.started.wait())
    await asyncio.wait([task, started], timeout=start_timeout, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # the worker died at start: its exception says why
    try:
        if not started.done():
            started.cancel()
            raise TimeoutError(f"the worker did not start consuming within {start_timeout:g} s")
        yield worker
    finally:
        worker.request_stop()
        async with asyncio.timeout(30):
            await task


async def wait_for_worker(url: str, *, consuming: bool = False, timeout: float = 30) -> None:
    """Until a worker has declared its queue and exchange on the broker of `url`.

    With `consuming`, until it also consumes `statusek.commands`: a benchmark that times its first
    command from the moment it is sent must not time the worker's start.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    connection = await aio_pika.connect(url)
    try:
        while loop.time() < deadline:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue("statusek.commands", passive=True)
                await channel.declare_exchange("statusek.events", passive=True)
                if not consuming or queue.declaration_result.consumer_count:
                    return
            except aio_pika.exceptions.ChannelClosed:
                pass
            else:
                await channel.close()
            await asyncio.sleep(0.1)
        waited_for = "consume" if consuming else "declare"
        raise TimeoutError(f"no worker did {waited_for} statusek.commands within {timeout:g} s")
    finally:
        await connection.close()
