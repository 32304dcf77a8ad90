"""Statusek on a three-node RabbitMQ cluster: the node leading the command queue stops under load.

Two worker processes, a publisher and a subscriber are all given the three
nodes' URLs and fail over between them. The publisher sends create, STARTED and
FINISHED per instance (persistent, confirmed, with a message_id, re-published
with the same message_id when its link breaks); the subscriber reads
notifications from a quorum queue of its own. The command queues' leader node is
stopped, then started again, while commands flow. Nothing may be lost,
applied twice, or reordered within an instance.

Every queue the worker declares is a quorum queue with members on all three
nodes, so no node is the only home of a queue the worker needs.

The partition count is the session's (STATUSEK_TEST_COMMAND_PARTITIONS): every
queue named `statusek.commands*` counts as a command queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage

from statusek.adapters.rabbitmq.endpoints import connect_first
from statusek.adapters.rabbitmq.errors import dropped_link_as_error
from statusek.testing import fresh_database
from tests.helpers import TASK
from tests.integration.cluster import SERVER, Node, RabbitCluster, available, rabbitmq_cluster
from tests.log_secrets import new_password

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason=f"needs RabbitMQ's server scripts ({SERVER} is missing)"),
]

COMMANDS_PREFIX = "statusek.commands"
WORKERS = 2
LINK_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *aio_pika.exceptions.CONNECTION_EXCEPTIONS)
# Not confirmed: the link broke, the confirm never came, or the broker nacked.
RETRIED: tuple[type[BaseException], ...] = (*LINK_ERRORS, aio_pika.exceptions.DeliveryError)


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitCluster]:
    """Three clustered RabbitMQ nodes of the test's own, all stopped afterwards (started in a thread)."""
    stack = contextlib.ExitStack()
    cluster = await asyncio.to_thread(stack.enter_context, rabbitmq_cluster())
    try:
        yield cluster
    finally:
        await asyncio.to_thread(stack.close)


@dataclass
class Deployment:
    cluster: RabbitCluster
    vhost: str
    urls: list[str]
    user: str
    db: asyncpg.Connection
    workers: list[subprocess.Popen[bytes]]
    logs: Path


@pytest.fixture
async def deployment(
    rabbit: RabbitCluster, worker_env: dict[str, str], database_owner_url: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    """A vhost and user on the cluster, a fresh database, and worker processes given every node's URL."""
    vhost, user = "statusek", "statusek-cluster"
    secret = new_password(18)
    await asyncio.to_thread(rabbit.add_vhost, vhost)
    await asyncio.to_thread(rabbit.add_user, user, secret, vhost=vhost)
    urls = rabbit.urls(user, secret, vhost)
    async with fresh_database(database_owner_url) as db_url:
        env = {**worker_env, "STATUSEK_AMQP_URL": ",".join(urls), "STATUSEK_DATABASE_URL": db_url}
        workers = []
        for i in range(WORKERS):
            with (tmp_path / f"worker-{i}.log").open("wb") as log:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "statusek", "worker"],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        db = await asyncpg.connect(db_url)
        try:
            yield Deployment(rabbit, vhost, urls, user, db, workers, tmp_path)
        finally:
            await db.close()
            for p in workers:
                if p.poll() is None:
                    p.terminate()
            for p in workers:
                try:
                    await asyncio.to_thread(p.wait, 30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    await asyncio.to_thread(p.wait)


# The worker declares these classic queues (on the node it is connected to). A classic queue lives on
# one node: while that node is down no worker can declare it, so none consumes commands either.
# Declared first as quorum queues, they are replicated; the worker keeps them as they are.
class Link:
    """A connection to the first node that answers, made again (to another node) when it breaks."""

    def __init__(self, urls: list[str], name: str):
        self.urls = urls
        self.name = name
        self.connection: AbstractConnection | None = None
        self.lost = asyncio.Event()
        self.failovers = 0
        self._start: int | None = 0  # the first link goes to the first URL; later ones rotate
        self._lock = asyncio.Lock()

    async def get(self) -> AbstractConnection:
        async with self._lock:
            if self.connection is not None and not self.lost.is_set() and not self.connection.is_closed:
                return self.connection
            if self.connection is not None:
                self.failovers += 1
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.connection.close(), 2)
            delay = 0.1
            while True:
                try:
                    connection, _ = await connect_first(
                        self.urls,
                        timeout=10,
                        client_properties={"connection_name": self.name},
                        start=self._start,
                    )
                    self._start = None
                    break
                except Exception:
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_: lost.set())
            self.connection, self.lost = connection, lost
            return connection

    def drop(self) -> None:
        self.lost.set()

    async def close(self) -> None:
        self.drop()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.close(), 5)


class Publisher:
    """Commands with confirms; one not confirmed is published again, same message_id, after failover."""

    def __init__(self, urls: list[str], user: str):
        self.link = Link(urls, "cluster-test publisher")
        self.user = user
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None
        self.republished = 0
        self.confirmed = 0

    async def _exchange(self) -> AbstractExchange:
        connection = await self.link.get()
        if self.channel is None or self.channel.is_closed or self.exchange is None or self.link.lost.is_set():
            lost = self.link.lost  # this link's: a late callback of an old channel must not drop the next
            self.channel = await connection.channel(publisher_confirms=True)
            self.channel.close_callbacks.add(lambda *_: lost.set())
            self.exchange = await self.channel.get_exchange(COMMANDS_PREFIX, ensure=False)
        return self.exchange

    async def send(self, routing_key: str, body: dict[str, Any], token: str) -> None:
        message_id = uuid.uuid4().hex
        attempt = 0
        while True:
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                message_id=message_id,
                user_id=self.user,
                headers={"instance_token": token},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            try:
                # Closing a link to a node that no longer answers (as `Link.get` does) fails the
                # publishes still on it with aiormq's CancelledError: one more way of not being confirmed.
                async with dropped_link_as_error():
                    exchange = await self._exchange()
                    await asyncio.wait_for(exchange.publish(message, routing_key=routing_key), 30)
                self.confirmed += 1
                return
            except RETRIED:
                # Not confirmed (the link broke, the confirm never came, or a nack): again, elsewhere.
                self.link.drop()
                attempt += 1
                self.republished += 1
                await asyncio.sleep(min(1.0, 0.05 * attempt))


@dataclass
class Subscriber:
    """Notifications from a quorum queue bound to statusek.events, consumed again after each failover."""

    urls: list[str]
    queue: str = field(default_factory=lambda: f"cluster-test.events.{secrets.token_hex(3)}")
    received: list[tuple[str, str, str, int]] = field(default_factory=list)  # id, type, token, seq
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.link = Link(self.urls, "cluster-test subscriber")

    async def declare(self) -> None:
        connection = await self.link.get()
        channel = await connection.channel()
        try:
            q = await channel.declare_queue(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
            await q.bind("statusek.events", routing_key="")
        finally:
            await channel.close()

    async def run(self) -> None:
        while True:
            try:
                async with dropped_link_as_error():
                    connection = await self.link.get()
                    lost = self.link.lost
                    channel = await connection.channel()
                    channel.close_callbacks.add(lambda *_, lost=lost: lost.set())
                    await channel.set_qos(prefetch_count=200)
                    q = await channel.get_queue(self.queue, ensure=False)
                    await q.consume(self._on_message)
                    await lost.wait()
            except LINK_ERRORS:
                self.link.drop()
                await asyncio.sleep(0.2)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        self.received.append(
            (message.message_id or "", message.type or "", str(body.get("instance_token")), int(body["seq"]))
        )
        self.changed.set()
        with contextlib.suppress(*LINK_ERRORS):
            async with dropped_link_as_error():
                await message.ack()  # lost with its link: the message comes again (a duplicate we drop)

    def finished(self) -> set[str]:
        return {token for _, kind, token, _ in self.received if kind == "instance-finished"}


async def wait_for_consumers(deployment: Deployment, count: int, timeout: float = 180) -> None:
    """Until `count` workers consume statusek.queries (every worker does, on any node)."""
    link = Link(deployment.urls, "cluster-test probe")
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(*LINK_ERRORS, aio_pika.exceptions.ChannelNotFoundEntity):
                async with dropped_link_as_error():
                    channel = await (await link.get()).channel()
                    try:
                        q = await channel.declare_queue("statusek.queries", passive=True)
                        if int(q.declaration_result.consumer_count or 0) >= count:
                            return
                    finally:
                        with contextlib.suppress(Exception):
                            await channel.close()
            for p in deployment.workers:
                assert p.poll() is None, f"a worker exited ({p.returncode}); logs in {deployment.logs}"
            assert time.monotonic() < deadline, f"{count} workers did not consume; logs in {deployment.logs}"
            await asyncio.sleep(0.5)
    finally:
        await link.close()


def busiest(leaders: dict[str, Node]) -> Node:
    """The node leading the most command queues."""
    counts = Counter(node.name for node in leaders.values())
    name = counts.most_common(1)[0][0]
    return next(node for node in leaders.values() if node.name == name)


def diagnostics(d: Deployment) -> str:
    """The workers' last log lines but commands, and the queues, for a failure message."""
    lines = []
    for path in sorted(d.logs.glob("worker-*.log")):
        tail = [x for x in path.read_text(errors="replace").splitlines() if '"event": "command"' not in x]
        lines += [f"--- {path.name}", *(x[:600] for x in tail[-15:])]
    try:
        lines.append(f"--- queues: {d.cluster.queues(d.vhost)}")
    except Exception as e:
        lines.append(f"--- queues: {e}")
    return "\n".join(lines)


async def first_event_after(db: asyncpg.Connection, after: datetime, timeout: float) -> datetime:
    """When the first command applied after `after` was recorded (the database's clock)."""
    deadline = time.monotonic() + timeout
    while True:
        at: datetime | None = await db.fetchval(
            "SELECT min(recorded_at) FROM events WHERE recorded_at > $1", after
        )
        if at is not None:
            return at
        assert time.monotonic() < deadline, f"no command was applied within {timeout} s of the node stop"
        await asyncio.sleep(0.1)


async def test_stopping_the_command_queue_leader_loses_and_repeats_nothing(deployment: Deployment) -> None:
    """Commands flow on through a leader node's stop and restart: each instance applied once, in order."""
    d = deployment
    await wait_for_consumers(d, WORKERS)
    # The publisher and the subscriber start on the node to be stopped, so that they fail over too.
    leaders = await asyncio.to_thread(d.cluster.leaders, d.vhost, COMMANDS_PREFIX)
    assert leaders, f"no command queue found: {await asyncio.to_thread(d.cluster.queues, d.vhost)}"
    first = busiest(leaders).index - 1
    victim_first = [*d.urls[first:], *d.urls[:first]]
    publisher = Publisher(victim_first, d.user)
    subscriber = Subscriber(victim_first)
    await subscriber.declare()
    consuming = asyncio.create_task(subscriber.run())
    tokens: list[str] = []
    stop_load = asyncio.Event()
    in_flight = asyncio.Semaphore(8)

    async def instance(token: str) -> None:
        try:
            await publisher.send("create", {"object_name": TASK, "instance_token": token}, token)
            for status in ("STARTED", "FINISHED"):
                await publisher.send("set-status", {"instance_token": token, "status_name": status}, token)
        finally:
            in_flight.release()

    async def load() -> None:
        running = []
        while not stop_load.is_set():
            await in_flight.acquire()
            token = str(uuid.uuid4())
            tokens.append(token)
            running.append(asyncio.create_task(instance(token)))
            await asyncio.sleep(0.1)
        await asyncio.gather(*running)

    try:
        async with asyncio.timeout(900):
            loading = asyncio.create_task(load())
            await asyncio.sleep(5)  # steady load first
            applied = await d.db.fetchval("SELECT count(*) FROM events")
            assert applied > 0, f"no command applied before the stop\n{diagnostics(d)}"
            leaders = await asyncio.to_thread(d.cluster.leaders, d.vhost, COMMANDS_PREFIX)
            victim = busiest(leaders)
            before = len(tokens)
            issued = await d.db.fetchval("SELECT clock_timestamp()")
            await asyncio.to_thread(d.cluster.stop, victim)
            down = await d.db.fetchval("SELECT clock_timestamp()")
            try:
                resumed = await first_event_after(d.db, down, timeout=180)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{diagnostics(d)}") from None
            flowed_after = (resumed - down).total_seconds()
            await asyncio.sleep(5)  # on two nodes for a while
            await asyncio.to_thread(d.cluster.start, victim)
            await asyncio.sleep(5)  # on three again
            stop_load.set()
            await loading
            while not set(tokens) <= subscriber.finished():  # notifications may trail the commands
                await asyncio.wait_for(subscriber.changed.wait(), 120)
                subscriber.changed.clear()
    finally:
        stop_load.set()
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await publisher.link.close()
        await subscriber.link.close()

    # The event log: every instance has exactly its four events, seq 1..4 (created, two statuses, finished).
    rows = await d.db.fetch(
        "SELECT instance_token::text AS token, array_agg(seq ORDER BY seq) AS seqs,"
        " array_agg(kind ORDER BY seq) AS kinds FROM events GROUP BY instance_token"
    )
    logged = {r["token"]: list(r["seqs"]) for r in rows}
    assert set(logged) == set(tokens), "instances missing from, or unknown to, the event log"
    assert {t: s for t, s in logged.items() if s != [1, 2, 3, 4]} == {}, "gaps or repeats in seq"

    # The notifications: exact duplicates (at-least-once) dropped, each instance's in order and complete.
    seen: set[str] = set()
    per_instance: dict[str, list[tuple[str, int]]] = defaultdict(list)
    duplicates = 0
    for message_id, kind, token, seq in subscriber.received:
        if message_id in seen:
            duplicates += 1
            continue
        seen.add(message_id)
        per_instance[token].append((kind, seq))
    expected = [("status-changed", 2), ("status-changed", 3), ("instance-finished", 4)]
    wrong = {t: got for t in tokens if (got := per_instance.get(t)) != expected}
    assert wrong == {}, f"{len(wrong)} instances with lost, extra or reordered notifications"
    assert set(per_instance) == set(tokens)
    assert all(p.poll() is None for p in d.workers), f"a worker exited; logs in {d.logs}"

    times = [
        r["recorded_at"]
        for r in await d.db.fetch(
            "SELECT recorded_at FROM events WHERE recorded_at BETWEEN $1 AND $2 ORDER BY recorded_at",
            issued,
            resumed,
        )
    ]
    pause = max((b - a).total_seconds() for a, b in zip([issued, *times], [*times, resumed], strict=True))
    print(
        f"\ncommands flowed again after {flowed_after:.2f} s from the node's stop (node {victim.name} "
        f"leading {sorted(leaders)}; `rabbitmqctl stop` took {(down - issued).total_seconds():.1f} s; "
        f"longest pause in applied commands from the stop request on {pause:.2f} s); "
        f"{len(tokens)} instances ({before} before the stop), {publisher.confirmed} commands confirmed, "
        f"{publisher.republished} re-published, publisher failovers {publisher.link.failovers}, "
        f"subscriber failovers {subscriber.link.failovers}, duplicate notifications dropped {duplicates}"
    )
