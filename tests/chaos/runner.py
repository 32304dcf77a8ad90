"""Plays a `Schedule` against worker processes of a `Cluster` and records its `History`.

The workers reach Postgres and RabbitMQ through a `TcpProxy` each, so links can be cut or
black-holed for them alone; the clients, the subscribers and the checker's reads go
straight to the servers. Restarting the machine's Postgres would disturb everyone else on a
shared machine, so "Postgres restarted" is played by the proxy: `block()` cuts every
connection and refuses new ones for a while, which is what the workers see of a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.rabbitmq.endpoints import with_heartbeat
from statusek.core.partitions import routing_headers
from tests.chaos.history import EventRow, History, Note, Sent
from tests.chaos.schedule import PATIENT, Fault, Planned, Schedule
from tests.helpers import eventually
from tests.integration.conftest import Cluster
from tests.integration.faults import TcpProxy, proxied

DEADLINE_HEADER = "x-statusek-deadline"
GRACE = 0.5  # an impatient client waits this much past its deadline before it says "no answer"
FULL_QUEUE_LENGTH = 3
REPLIES_WAIT = 30.0  # after the load: how long patient clients still wait
SETTLE_WAIT = 20.0  # for every instance to finish (short heartbeats) and every notification to arrive


class Recorder:
    """The client side: one publisher with confirms, its reply queue, and the subscribers."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel):
        self.connection = connection
        self.channel = channel
        self.reply_queue = ""
        self.replies: dict[str, tuple[float, dict[str, Any]]] = {}  # correlation_id -> (arrival, reply)
        self.notes: dict[str, list[Note]] = {}
        self.full_queue: aio_pika.abc.AbstractQueue | None = None
        self.opened_at = time.monotonic()
        self.full_for: float | None = None

    @classmethod
    async def open(cls, url: str, subscribers: list[str], full: str | None) -> Recorder:
        connection = await aio_pika.connect(url)
        recorder = cls(connection, await connection.channel(publisher_confirms=True))
        replies = await recorder.channel.declare_queue(exclusive=True)
        await replies.consume(recorder._on_reply, no_ack=True)
        recorder.reply_queue = replies.name
        for name in subscribers:
            queue = await recorder.channel.declare_queue(exclusive=True)
            await queue.bind("statusek.events")
            await queue.consume(recorder._subscriber(name), no_ack=True)
        if full is not None:
            # Consumed only once the fault ends: until then the broker rejects what overflows it.
            arguments: dict[str, Any] = {"x-max-length": FULL_QUEUE_LENGTH, "x-overflow": "reject-publish"}
            recorder.full_queue = await recorder.channel.declare_queue(exclusive=True, arguments=arguments)
            await recorder.full_queue.bind("statusek.events")
            recorder.notes[full] = []
        return recorder

    async def drain_full(self, name: str) -> None:
        if self.full_queue is not None:
            await self.full_queue.consume(self._subscriber(name), no_ack=True)
            # An upper bound of how long it refused: it filled at some point after it was declared.
            self.full_for = time.monotonic() - self.opened_at

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        self.replies.setdefault(message.correlation_id or "", (time.monotonic(), json.loads(message.body)))

    def _subscriber(self, name: str) -> Any:
        notes = self.notes.setdefault(name, [])

        async def on_notification(message: AbstractIncomingMessage) -> None:
            body = json.loads(message.body)
            if "instance_token" not in body or "seq" not in body:
                return
            at = body.get("occurred_at") or body.get("finished_at")
            notes.append(
                Note(
                    token=body["instance_token"],
                    seq=int(body["seq"]),
                    type=message.type or "",
                    at=datetime.fromisoformat(at).timestamp() if at else 0.0,
                    reason=body.get("reason"),
                )
            )

        return on_notification

    async def publish(self, planned: Planned) -> tuple[str, float]:
        correlation_id = uuid.uuid4().hex
        headers: dict[str, Any] = dict(routing_headers(planned.body)) if planned.headered else {}
        if planned.patience < PATIENT:
            headers[DEADLINE_HEADER] = (datetime.now(UTC) + timedelta(seconds=planned.patience)).isoformat()
        message = aio_pika.Message(
            json.dumps(planned.body).encode(),
            headers=headers or None,
            message_id=planned.message_id,
            correlation_id=correlation_id,
            reply_to=self.reply_queue,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        sent_at = time.monotonic()
        exchange = await self.channel.get_exchange("statusek.commands", ensure=False)
        await exchange.publish(message, routing_key=planned.routing_key)
        return correlation_id, sent_at

    async def close(self) -> None:
        await self.connection.close()


def active_worker(cluster: Cluster) -> subprocess.Popen[bytes] | None:
    """The live worker that logged the latest applied command (the single active consumer)."""
    best: tuple[str, subprocess.Popen[bytes]] | None = None
    for index, proc in enumerate(cluster.workers):
        if proc.poll() is not None:
            continue
        path = cluster.logs / f"worker-{index}.log"
        latest = ""
        with contextlib.suppress(OSError):
            for raw in path.read_text(errors="replace").splitlines():
                if raw.startswith("{") and '"command"' in raw:
                    with contextlib.suppress(ValueError):
                        line = json.loads(raw)
                        if line.get("event") == "command":
                            latest = max(latest, str(line.get("timestamp", "")))
        if best is None or latest > best[0]:
            best = (latest, proc)
    return best[1] if best else None


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[bytes] | None) -> Iterator[None]:
    if proc is not None:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


# Worker settings for short schedules: a few seconds of black hole should hand the command
# queues to a standby (the defaults wait 10 s), and the sweeper should not lag heartbeats.
WORKER_ENV = {
    "STATUSEK_SWEEP_MAX_SLEEP": "1",
    "STATUSEK_DATABASE_STALL_TIMEOUT": "2",
    "STATUSEK_DATABASE_STATEMENT_TIMEOUT": "3",
}


# Faults on one link of the active worker: which of its (postgres, rabbitmq) proxies, and what it does.
ACTIVE_LINK_FAULTS: dict[str, tuple[int, Callable[[TcpProxy], contextlib.AbstractContextManager[None]]]] = {
    "pg_blackhole": (0, TcpProxy.stalling),
    "broker_blackhole": (1, TcpProxy.stalling),
    "broker_cut": (1, TcpProxy.blocking),
}


class Play:
    def __init__(self, schedule: Schedule, cluster: Cluster):
        self.schedule = schedule
        self.cluster = cluster
        # Each worker reaches Postgres and RabbitMQ through proxies of its own, so a fault can
        # hit the active worker's links alone while the standbys keep theirs.
        self.links: dict[int, tuple[TcpProxy, TcpProxy]] = {}  # pid -> (postgres, rabbitmq)
        self.info: dict[str, Any] = {"faults": []}

    async def start_worker(self) -> None:
        pg, pg_url = await proxied(self.cluster.env["STATUSEK_DATABASE_URL"], 5432)
        amqp, amqp_url = await proxied(self.cluster.env["STATUSEK_AMQP_URL"], 5672)
        if "broker_blackhole" in self.schedule.kinds:
            # A black hole outlasting the heartbeat grace is given up; a shorter one only delays.
            amqp_url = with_heartbeat(amqp_url, 1)
        env = {**WORKER_ENV, "STATUSEK_AMQP_URL": amqp_url, "STATUSEK_DATABASE_URL": pg_url}
        (proc,) = self.cluster.start(1, **env)
        self.links[proc.pid] = (pg, amqp)

    def active(self, note: dict[str, Any]) -> tuple[TcpProxy, TcpProxy] | None:
        victim = active_worker(self.cluster)
        note["pid"] = victim.pid if victim else None
        return self.links[victim.pid] if victim else None

    async def fault(self, recorder: Recorder, fault: Fault, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + fault.at - time.monotonic()))
        started = time.monotonic() - t0
        note: dict[str, Any] = {"kind": fault.kind, "at": round(started, 2), "for": fault.duration}
        self.info["faults"].append(note)
        if fault.kind == "sigkill":
            victim = active_worker(self.cluster)
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                note["pid"] = victim.pid
            await asyncio.sleep(fault.duration)
            await self.start_worker()
        elif fault.kind == "sigstop":
            victim = active_worker(self.cluster)
            note["pid"] = victim.pid if victim else None
            with _stopped(victim):
                await asyncio.sleep(fault.duration)
        elif fault.kind in ACTIVE_LINK_FAULTS:
            side, hold = ACTIVE_LINK_FAULTS[fault.kind]
            links = self.active(note)
            with hold(links[side]) if links else contextlib.nullcontext():
                await asyncio.sleep(fault.duration)
        elif fault.kind == "pg_restart":
            with contextlib.ExitStack() as stack:
                for pg, _ in self.links.values():
                    stack.enter_context(pg.blocking())
                await asyncio.sleep(fault.duration)
        elif fault.kind == "queue_full":
            await asyncio.sleep(fault.duration)
            await recorder.drain_full("full")

    async def run(self) -> History:
        started = time.monotonic()
        schedule, cluster = self.schedule, self.cluster
        full = "full" if "queue_full" in schedule.kinds else None
        recorder = await Recorder.open(cluster.env["STATUSEK_AMQP_URL"], ["a", "b"], full)
        db = await asyncpg.connect(cluster.env["STATUSEK_DATABASE_URL"])
        try:
            await self.start_worker()
            await cluster.wait_for_consumers(1)
            for _ in range(schedule.workers - 1):
                await self.start_worker()
            await cluster.wait_for_consumers(schedule.workers)
            sent = await self._play(recorder)
            history = await self._collect(recorder, db, sent)
        finally:
            for proc in cluster.alive:
                proc.send_signal(signal.SIGCONT)  # a stopped worker would not hear SIGTERM
            await db.close()
            await recorder.close()
        history.seconds = time.monotonic() - started
        return history

    async def close(self) -> None:
        """Close the proxies (after the workers are stopped: closing cuts their links)."""
        for pg, amqp in self.links.values():
            await pg.close()
            await amqp.close()

    async def _play(self, recorder: Recorder) -> list[tuple[Planned, str, float]]:
        t0 = time.monotonic()
        faults = [asyncio.create_task(self.fault(recorder, f, t0)) for f in self.schedule.faults]
        sent = []
        try:
            for planned in self.schedule.commands:
                await asyncio.sleep(max(0.0, t0 + planned.at - time.monotonic()))
                correlation_id, sent_at = await recorder.publish(planned)
                sent.append((planned, correlation_id, sent_at))
        finally:
            await asyncio.gather(*faults)
        return sent

    async def _collect(
        self, recorder: Recorder, db: asyncpg.Connection, sent: list[tuple[Planned, str, float]]
    ) -> History:
        patient = [c for p, c, _ in sent if p.patience >= PATIENT]
        await _until(lambda: all(c in recorder.replies for c in patient), REPLIES_WAIT)

        async def settled() -> bool:
            if await db.fetchval("SELECT count(*) FROM instances WHERE finished_at IS NULL"):
                return False
            rows = await db.fetch(
                "SELECT instance_token, seq FROM events WHERE kind IN ('status', 'finished')"
            )
            wanted = {(str(r["instance_token"]), r["seq"]) for r in rows}
            return all(wanted <= {(n.token, n.seq) for n in notes} for notes in recorder.notes.values())

        with contextlib.suppress(AssertionError):  # the checker judges what did not settle
            await eventually(settled, SETTLE_WAIT, every=0.3)
        await asyncio.sleep(0.5)  # a few late copies, if any, belong in the record
        history = History(seed=self.schedule.seed, faults=self.schedule.kinds)
        for index, (planned, correlation_id, sent_at) in enumerate(sent):
            command = Sent(
                index=index,
                routing_key=planned.routing_key,
                tag=planned.tag,
                token=planned.token,
                message_id=planned.message_id,
                headered=planned.headered,
                patience=planned.patience,
                duplicate=planned.duplicate,
                reuses_id=planned.reuses_id,
            )
            heard = recorder.replies.get(correlation_id)
            if heard is not None:
                arrival, reply = heard
                waited = planned.patience + (GRACE if planned.patience < PATIENT else REPLIES_WAIT)
                if arrival - sent_at <= waited:
                    command.code, command.status = reply.get("code"), reply.get("status")
                else:
                    command.late_code = reply.get("code")
            history.commands.append(command)
        for r in await db.fetch(
            "SELECT instance_token, seq, kind, occurred_at, status_name, message, reason FROM events"
        ):
            history.events.append(
                EventRow(
                    token=str(r["instance_token"]),
                    seq=r["seq"],
                    kind=r["kind"],
                    occurred_at=r["occurred_at"].timestamp(),
                    status_name=r["status_name"],
                    message=r["message"],
                    reason=r["reason"],
                )
            )
        for r in await db.fetch("SELECT token, labels->>'chaos' AS tag FROM instances"):
            history.created_tags[str(r["token"])] = r["tag"]
        history.notes = {name: list(notes) for name, notes in recorder.notes.items()}
        history.healthy = {name for name in recorder.notes if name != "full"}
        history.full_for = recorder.full_for
        self.info["codes"] = dict(Counter(c.code or "no answer" for c in history.commands))
        self.info["events"] = len(history.events)
        self.info["notes"] = {name: len(notes) for name, notes in history.notes.items()}
        history.info = self.info
        return history


async def _until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 (several sources, no event)
        await asyncio.sleep(0.2)


async def run_schedule(schedule: Schedule, cluster: Cluster) -> History:
    """Play `schedule` on `cluster` (a vhost and database of its own, no workers yet).

    The workers are left running (through their proxies, closed when `cluster.stop()` has
    stopped them), so the caller's teardown drains them as it would any other.
    """
    play = Play(schedule, cluster)
    try:
        return await play.run()
    finally:
        await asyncio.to_thread(cluster.stop)
        await play.close()
