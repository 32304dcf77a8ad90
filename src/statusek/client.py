"""An asyncio client for statusek's wire contract (aio-pika under the hood).

    async with Client.connect("amqp://guest:guest@localhost/") as client:
        token = await client.create("2-POINT LINE TASK")
        reason = await client.wait_finished(token, timeout=60)

Commands are published persistent, with publisher confirms and a
`message_id`, so a retried call is applied once. Replies come back on
RabbitMQ's direct reply-to pseudo-queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from statusek.core.codes import Code

REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


class StatusekRejected(Exception):
    """The worker answered with a code other than SUCCESS."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None):
        self.code = code
        self.message = message
        self.data = data or {}
        super().__init__(f"{code}: {message}")


class InstanceNotFound(StatusekRejected):
    """INSTANCE_TOKEN_IS_NOT_FOUND or OBJECT_NAME_IS_NOT_FOUND."""


class InstanceFinishedError(StatusekRejected):
    """INSTANCE_IS_FINISHED: the instance accepts no more statuses or pings."""


class StatusNotReady(StatusekRejected):
    """A status rule refused the status (checks 3 to 7 of SPEC section 3)."""


class TokenConflict(StatusekRejected):
    """INSTANCE_TOKEN_CONFLICT."""


class InvalidRequest(StatusekRejected):
    """INVALID_MESSAGE: the request broke the contract (a bug in the caller)."""


_FAMILIES: dict[str, type[StatusekRejected]] = {
    Code.INSTANCE_TOKEN_IS_NOT_FOUND: InstanceNotFound,
    Code.OBJECT_NAME_IS_NOT_FOUND: InstanceNotFound,
    Code.INSTANCE_IS_FINISHED: InstanceFinishedError,
    Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT: StatusNotReady,
    Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET: StatusNotReady,
    Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET: StatusNotReady,
    Code.AT_LEAST_ONE_NEXT_STATUS_IS_SET: StatusNotReady,
    Code.STATUS_IS_ALREADY_SET: StatusNotReady,
    Code.INSTANCE_TOKEN_CONFLICT: TokenConflict,
    Code.INVALID_MESSAGE: InvalidRequest,
}


def rejection(code: str, message: str, data: dict[str, Any] | None = None) -> StatusekRejected:
    return _FAMILIES.get(code, StatusekRejected)(code, message, data)


class Client:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        *,
        commands_exchange: str = "statusek.commands",
        queries_exchange: str = "statusek.queries",
        events_exchange: str = "statusek.events",
    ):
        self._connection = connection
        self._channel = channel
        self._commands = commands_exchange
        self._queries = queries_exchange
        self._events = events_exchange
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subscribers: set[Callable[[str, dict[str, Any]], None]] = set()
        self._events_queue: aio_pika.abc.AbstractQueue | None = None

    @classmethod
    async def connect(cls, url: str | None = None, **names: str) -> Client:
        """Connect to `url`, else $STATUSEK_AMQP_URL, else the local broker."""
        url = url or os.environ.get("STATUSEK_AMQP_URL") or DEFAULT_URL
        connection = await aio_pika.connect_robust(url)
        channel = await connection.channel(publisher_confirms=True)
        client = cls(connection, channel, **names)
        reply_queue = await channel.get_queue(REPLY_TO, ensure=False)
        await reply_queue.consume(client._on_reply, no_ack=True)
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._connection.close()

    # Commands

    async def create(
        self,
        object_name: str,
        *,
        instance_token: uuid.UUID | str | None = None,
        instance_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        labels: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> str:
        body: dict[str, Any] = {"object_name": object_name}
        if instance_token is not None:
            body["instance_token"] = str(instance_token)
        if instance_timeout is not None:
            body["instance_timeout"] = instance_timeout
        if heartbeat_timeout is not None:
            body["heartbeat_timeout"] = heartbeat_timeout
        if labels:
            body["labels"] = labels
        data = await self.call(self._commands, "create", body, timeout=timeout)
        return str(data["instance_token"])

    async def set_status(
        self, token: str, status_name: str, message: str | None = None, *, timeout: float = 10
    ) -> None:
        body: dict[str, Any] = {"instance_token": str(token), "status_name": status_name}
        if message is not None:
            body["status_message"] = message
        await self.call(self._commands, "set-status", body, timeout=timeout)

    async def ping(
        self, token: str, message: str | None = None, code: int | None = None, *, timeout: float = 10
    ) -> str | None:
        """Returns the instance's new deadline (ISO 8601), or None if it has none."""
        body: dict[str, Any] = {"instance_token": str(token)}
        if message is not None:
            body["message"] = message
        if code is not None:
            body["code"] = code
        data = await self.call(self._commands, "ping", body, timeout=timeout)
        deadline = data.get("deadline")
        return str(deadline) if deadline else None

    async def cancel(self, token: str, reason: str | None = None, *, timeout: float = 10) -> None:
        body: dict[str, Any] = {"instance_token": str(token)}
        if reason is not None:
            body["reason"] = reason
        await self.call(self._commands, "cancel", body, timeout=timeout)

    # Queries

    async def is_set(self, token: str, status_name: str) -> bool:
        data = await self.call(
            self._queries, "is-set", {"instance_token": str(token), "status_name": status_name}
        )
        return bool(data["status_is_set"])

    async def is_ready(self, token: str, status_name: str) -> tuple[bool, str]:
        data = await self.call(
            self._queries, "is-ready", {"instance_token": str(token), "status_name": status_name}
        )
        return bool(data["status_is_ready_to_set"]), str(data["status_is_ready_to_set_description"])

    async def is_finished(self, token: str) -> tuple[bool, str | None]:
        data = await self.call(self._queries, "is-finished", {"instance_token": str(token)})
        return bool(data["instance_is_finished"]), data.get("instance_is_finished_description")

    async def get_events(self, token: str) -> list[dict[str, Any]]:
        data = await self.call(self._queries, "get-events", {"instance_token": str(token)})
        return list(data["events"])

    async def get_instance(self, token: str) -> dict[str, Any]:
        return await self.call(self._queries, "get-instance", {"instance_token": str(token)})

    def heartbeat(self, token: str, every: float, message: str | None = None) -> Heartbeat:
        """Ping `token` every `every` seconds while the block runs (see `Heartbeat`)."""
        return Heartbeat(self, str(token), every, message)

    # Notifications

    async def wait_finished(self, token: str, timeout: float) -> str:
        """The finish reason of `token`, from its `instance-finished` notification.

        Subscribes first, then asks once (the instance may have finished
        already), then waits for the notification: no polling.
        """
        token = str(token)
        await self._ensure_events()
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_event(kind: str, body: dict[str, Any]) -> None:
            if kind == "instance-finished" and body.get("instance_token") == token and not found.done():
                found.set_result(str(body["reason"]))

        self._subscribers.add(on_event)
        try:
            finished, reason = await self.is_finished(token)
            if finished and reason:
                return reason
            return await asyncio.wait_for(found, timeout)
        finally:
            self._subscribers.discard(on_event)

    async def notifications(
        self,
        *,
        object_name: str | None = None,
        instance_token: str | None = None,
        types: set[str] | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (type, body) of notifications matching every filter given."""
        await self._ensure_events()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        def on_event(kind: str, body: dict[str, Any]) -> None:
            if types and kind not in types:
                return
            if object_name and body.get("object_name") != object_name:
                return
            if instance_token and body.get("instance_token") != str(instance_token):
                return
            queue.put_nowait((kind, body))

        self._subscribers.add(on_event)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(on_event)

    # Plumbing

    async def call(
        self, exchange: str, routing_key: str, body: dict[str, Any], *, timeout: float = 10
    ) -> dict[str, Any]:
        """Publish a request with confirms and return the reply's data, or raise."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            x = await self._channel.get_exchange(exchange, ensure=False)
            await x.publish(
                aio_pika.Message(
                    json.dumps(body).encode(),
                    content_type="application/json",
                    correlation_id=correlation_id,
                    message_id=uuid.uuid4().hex,
                    reply_to=REPLY_TO,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
            )
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(correlation_id, None)
        if not reply.get("status"):
            raise rejection(str(reply.get("code")), str(reply.get("message")), reply.get("data"))
        return dict(reply.get("data") or {})

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            with contextlib.suppress(ValueError):
                future.set_result(json.loads(message.body))

    async def _ensure_events(self) -> None:
        if self._events_queue is not None:
            return
        channel = await self._connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._events, routing_key="")
        await queue.consume(self._on_event, no_ack=True)
        self._events_queue = queue

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            body = json.loads(message.body)
        except ValueError:
            return
        for subscriber in list(self._subscribers):
            subscriber(message.type or "", body)


class Heartbeat:
    """Keeps an instance alive while a block of work runs, and stops the work if it ends.

        async with client.heartbeat(token, every=5) as beat:
            for page in pages:
                beat.progress(f"page {page} of {len(pages)}")
                await work(page)

    A ping answered INSTANCE_IS_FINISHED (cancelled, timed out elsewhere)
    cancels the block, and the `async with` raises InstanceFinishedError.
    Pings that fail for other reasons (broker hiccup) are retried next beat.
    """

    def __init__(self, client: Client, token: str, every: float, message: str | None):
        self._client = client
        self.token = token
        self.every = every
        self.message = message
        self.deadline: str | None = None
        self.pings = 0
        self.finished: InstanceFinishedError | None = None
        self._block: asyncio.Task[Any] | None = None
        self._pinger: asyncio.Task[None] | None = None

    def progress(self, message: str) -> None:
        """The message the next pings carry (visible in get-events)."""
        self.message = message

    async def __aenter__(self) -> Heartbeat:
        self._block = asyncio.current_task()
        self.deadline = await self._client.ping(self.token, self.message)
        self.pings += 1
        self._pinger = asyncio.create_task(self._beat())
        return self

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                self.deadline = await self._client.ping(self.token, self.message, timeout=self.every)
                self.pings += 1
            except InstanceFinishedError as e:
                self.finished = e
                if self._block is not None:
                    self._block.cancel()
                return
            except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError):
                continue  # the next beat tries again; the deadline has slack for this

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self.finished is not None and exc_type is asyncio.CancelledError and self._block is not None:
            self._block.uncancel()
            raise self.finished
        return False
