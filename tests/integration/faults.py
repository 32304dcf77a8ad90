"""Tools for fault injection: a TCP proxy that can cut links, and a command ledger.

The ledger follows Jepsen's habit: count every command sent and confirmed,
then read the event log and say how many were applied, duplicated or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.integration.wire import Wire


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target.

    `block()` cuts every link and refuses new ones (a server that is down). `stall()` forwards
    nothing more and closes nothing (a black hole: packets dropped, nothing refused): links stay
    open, new ones are accepted and wait; `resume()` lets everything held go on, in order.
    With `closes_lost`, a side that closes its end is never heard of on the other (its last
    bytes arrive, its FIN is dropped): the other side's link stays open and silent.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.blocked = False
        self.closes_lost = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def stall(self) -> None:
        """Forward nothing, on open links and new ones, until `resume()`; close nothing."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @contextlib.contextmanager
    def stalling(self) -> Iterator[None]:
        """`stall()` for the block, then `resume()`."""
        self.stall()
        try:
            yield
        finally:
            self.resume()

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """`block()` for the block, then `unblock()`."""
        self.block()
        try:
            yield
        finally:
            self.unblock()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.close()
            return
        # Accepted, but not connected on until the stall ends: the target sees nothing meanwhile.
        await self._flowing.wait()
        if self.blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    # Held while stalled; reading no more meanwhile fills the sender's buffers.
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
                if self.closes_lost:
                    return  # dst stays open (and in _links, for cut() and close())
            except (OSError, asyncio.CancelledError):
                pass
            dst.close()
            self._links.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for w in list(self._links):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._links.clear()

    def block(self) -> None:
        self.blocked = True
        self.cut()

    def unblock(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        # Links and accepts held by a stall end now, refused, rather than wait forever.
        self.blocked = True
        self._flowing.set()
        self.cut()
        if self._server is not None:
            self._server.close()


def create_body(token: str) -> dict[str, object]:
    """A create of the shipped two-status model that stays open for an hour."""
    return {"object_name": "2-POINT LINE TASK", "instance_token": token, "instance_timeout": 3600}


async def created(db: asyncpg.Connection, tokens: list[str]) -> int:
    """How many of `tokens` are instances."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM instances WHERE token = ANY($1::uuid[])", [uuid.UUID(t) for t in tokens]
    )
    return count


async def proxied(url: str, default_port: int) -> tuple[TcpProxy, str]:
    """A started proxy to the server of `url`, and `url` rewritten to go through it."""
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port)
    port = await proxy.start()
    auth = parts.netloc.rpartition("@")[0]
    return proxy, urlunsplit(
        parts._replace(netloc=f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}")
    )


@dataclass
class Report:
    scenario: str
    commands_sent: int = 0
    commands_confirmed: int = 0
    applied: int = 0
    duplicated: int = 0
    lost: int = 0
    replies: int = 0
    notifications_published: int = 0
    notifications_received: int = 0
    notifications_missing: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        data = asdict(self)
        data.pop("scenario")
        extra = data.pop("extra")
        if not self.commands_sent:
            data = {}  # a scenario about something else than commands
        return json.dumps({**data, **extra})


REPORTS: list[Report] = []

STEPS = ("create", "STARTED", "ping", "FINISHED")


@dataclass
class Ledger:
    """Publishes each instance's four commands (create, STARTED, ping, FINISHED) and audits them."""

    wire: Wire
    report: Report
    tokens: list[str] = field(default_factory=list)
    confirmed: dict[str, str] = field(default_factory=dict)  # message_id -> correlation_id

    def commands(self, token: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (
                "create",
                {"object_name": "2-POINT LINE TASK", "instance_token": token, "instance_timeout": 3600},
            ),
            ("set-status", {"instance_token": token, "status_name": "STARTED"}),
            ("ping", {"instance_token": token, "message": "alive"}),
            ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
        ]

    async def publish(
        self, routing_key: str, body: dict[str, Any], message_id: str | None = None, **props: Any
    ) -> str:
        message_id = message_id or uuid.uuid4().hex
        self.report.commands_sent += 1
        # The test's own link goes straight to the broker, so a failure here is a test failure.
        correlation_id = await self.wire.send(routing_key, body, message_id=message_id, **props)
        self.confirmed[message_id] = correlation_id
        self.report.commands_confirmed += 1
        return message_id

    async def run(self, instances: int, per_second: float | None = None) -> None:
        """Publish `instances` x 4 commands back to back (optionally paced)."""
        for _ in range(instances):
            token = str(uuid.uuid4())
            self.tokens.append(token)
            for routing_key, body in self.commands(token):
                await self.publish(routing_key, body)
                if per_second:
                    await asyncio.sleep(1 / per_second)

    async def wait_replies(self, timeout: float) -> None:
        for correlation_id in self.confirmed.values():
            await self.wire.reply(correlation_id, timeout=timeout)
        self.report.replies = sum(1 for c in self.confirmed.values() if c in self.wire.replies)

    async def audit(self, db: asyncpg.Connection, *, notifications_timeout: float = 30) -> Report:
        """Read the log: every confirmed command applied once, every notification received."""
        rows = await db.fetch(
            "SELECT instance_token, array_agg(kind ORDER BY seq) AS kinds,"
            " array_agg(seq ORDER BY seq) AS seqs, array_agg(status_name ORDER BY seq) AS names"
            " FROM events WHERE instance_token = ANY($1::uuid[]) GROUP BY instance_token",
            [uuid.UUID(t) for t in self.tokens],
        )
        by_token = {str(r["instance_token"]): r for r in rows}
        expected = ["created", "status", "ping", "status", "finished"]
        applied = duplicated = lost = 0
        for token in self.tokens:
            row = by_token.get(token)
            kinds = list(row["kinds"]) if row else []
            counts = Counter(kinds)
            assert row is None or list(row["seqs"]) == list(range(1, len(kinds) + 1)), f"seq gap in {token}"
            effects = counts["created"] + counts["status"] + counts["ping"]
            applied += min(effects, 4)
            duplicated += (
                max(0, counts["created"] - 1) + max(0, counts["status"] - 2) + max(0, counts["ping"] - 1)
            )
            lost += max(0, 1 - counts["created"]) + max(0, 2 - counts["status"]) + max(0, 1 - counts["ping"])
            if row is not None and kinds != expected:
                self.report.extra.setdefault("unexpected_logs", []).append({token: kinds})
        self.report.applied, self.report.duplicated, self.report.lost = applied, duplicated, lost

        published = await db.fetch(
            "SELECT instance_token, seq FROM events WHERE kind IN ('status', 'finished')"
            " AND instance_token = ANY($1::uuid[])",
            [uuid.UUID(t) for t in self.tokens],
        )
        wanted = {(str(r["instance_token"]), r["seq"]) for r in published}
        self.report.notifications_published = len(wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + notifications_timeout
        while True:
            received = {
                (t, json.loads(m.body)["seq"])
                for t in self.tokens
                for m in self.wire.notifications.get(t, [])
            }
            if wanted <= received or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        self.report.notifications_received = sum(len(self.wire.notifications.get(t, [])) for t in self.tokens)
        self.report.notifications_missing = len(wanted - received)
        REPORTS.append(self.report)
        return self.report
