"""A raw AMQP peer for tests: publishes exactly what a test says, records what comes back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from statusek.core.partitions import routing_headers


class Wire:
    def __init__(self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel):
        self.connection = connection
        self.channel = channel
        self.replies: dict[str, dict[str, Any]] = {}
        self.notifications: dict[str, list[AbstractIncomingMessage]] = defaultdict(list)
        self._changed = asyncio.Condition()
        self._parked: dict[str, list[AbstractIncomingMessage]] = defaultdict(list)
        self.reply_queue = ""

    @classmethod
    async def open(cls, url: str) -> Wire:
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        wire = cls(connection, channel)
        replies = await channel.declare_queue(exclusive=True)
        await replies.consume(wire._on_reply, no_ack=True)
        wire.reply_queue = replies.name
        events = await channel.declare_queue(exclusive=True)
        await events.bind("statusek.events")
        await events.consume(wire._on_notification, no_ack=True)
        return wire

    async def close(self) -> None:
        await self.connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        async with self._changed:
            self.replies[message.correlation_id or ""] = json.loads(message.body)
            self._changed.notify_all()

    async def _on_notification(self, message: AbstractIncomingMessage) -> None:
        async with self._changed:
            # A global status belongs to no instance: its notifications are filed under "global".
            self.notifications[json.loads(message.body).get("instance_token", "global")].append(message)
            self._changed.notify_all()

    async def send(
        self,
        routing_key: str,
        body: dict[str, Any] | bytes,
        *,
        exchange: str = "statusek.commands",
        reply: bool = True,
        **properties: Any,
    ) -> str:
        """Publish with confirms; returns the correlation id to await the reply by."""
        correlation_id = uuid.uuid4().hex
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        if isinstance(body, dict):
            # The publisher's rule for several partitions (docs/guarantees.md, "Partitions"), as a
            # careful publisher follows it.
            properties.setdefault("headers", routing_headers(body))
        if reply:
            properties.setdefault("reply_to", self.reply_queue)
            properties.setdefault("correlation_id", correlation_id)
        x = (
            await self.channel.get_exchange(exchange, ensure=False)
            if exchange
            else self.channel.default_exchange
        )
        await x.publish(aio_pika.Message(payload, **properties), routing_key=routing_key)
        return correlation_id

    async def reply(self, correlation_id: str, timeout: float = 10) -> dict[str, Any]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: correlation_id in self.replies), timeout)
            return self.replies[correlation_id]

    async def request(
        self,
        routing_key: str,
        body: dict[str, Any] | bytes,
        *,
        exchange: str = "statusek.commands",
        **properties: Any,
    ) -> dict[str, Any]:
        return await self.reply(await self.send(routing_key, body, exchange=exchange, **properties))

    async def query(self, routing_key: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request(routing_key, body, exchange="statusek.queries")

    async def wait_notifications(
        self, token: str, count: int, timeout: float = 10
    ) -> list[AbstractIncomingMessage]:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.notifications[token]) >= count), timeout
            )
            return list(self.notifications[token])

    async def finished(self, token: str, timeout: float = 10) -> AbstractIncomingMessage:
        def found() -> AbstractIncomingMessage | None:
            return next((m for m in self.notifications[token] if m.type == "instance-finished"), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
        message = found()
        assert message is not None
        return message

    async def parked(self, queue: str, message_id: str, timeout: float = 10) -> AbstractIncomingMessage:
        """The copy of `message_id` the worker put in `queue` (dead-letter or rejected)."""
        q = await self.channel.get_queue(queue, ensure=False)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for m in self._parked[queue]:
                if m.message_id == message_id:
                    return m
            message = await q.get(no_ack=True, fail=False)
            if message is not None:
                self._parked[queue].append(message)
                continue
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{message_id} not found in {queue}")
            await asyncio.sleep(0.05)
