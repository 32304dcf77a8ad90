"""An asyncio client for statusek's wire contract (aio-pika under the hood).

    async with await Client.connect("amqp://guest:guest@localhost/") as client:
        token = await client.create("2-POINT LINE TASK")
        reason = await client.wait_finished(token, timeout=60)

Every request is bounded: it waits at most `timeout` seconds for its answer
and carries a little less than that as its AMQP expiration, so a request
nobody took in time is dropped by the broker and never applied after its
caller gave up. Commands are published persistent, with publisher confirms
and a `message_id`, so a repeat of the same request is applied once.
Replies come back on RabbitMQ's direct reply-to pseudo-queue.

The client keeps its own link to the broker and makes it again when it is
lost: a request waiting for its answer is published again on the new link,
with the same `message_id` (the worker answers a repeat with its stored
reply), `wait_finished` asks again whether the instance finished meanwhile,
and `notifications()` raises `NotificationsInterrupted`, since what was
published while the link was down is gone. Nothing waits beyond its bound:
when the link does not come back in time the call raises `BrokerUnreachable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pamqp.common import FieldTable

from statusek.adapters.rabbitmq.broker import describe
from statusek.adapters.rabbitmq.endpoints import NoBrokerReachable, connect_first, split_urls
from statusek.core.messages import DEADLINE_HEADER, MAX_EVENTS_PAGE
from statusek.core.partitions import routing_headers
from statusek.exceptions import (
    BrokerUnreachable,
    InstanceFinishedError,
    InstanceNotFound,
    InvalidRequest,
    InvalidURL,
    NoAnswerError,
    NotAllowed,
    NotificationsInterrupted,
    StatusekClientError,
    StatusekRejected,
    StatusNotReady,
    TokenConflict,
    TopologyNotFound,
    WaitTimeoutError,
    rejection,
)
from statusek.redact import mask_url, url_location

# The exceptions lived here before statusek.exceptions; they stay importable from here.
__all__ = [
    "BrokerUnreachable",
    "Client",
    "Created",
    "Heartbeat",
    "InstanceFinishedError",
    "InstanceNotFound",
    "InvalidRequest",
    "InvalidURL",
    "NoAnswerError",
    "NotAllowed",
    "NotificationsInterrupted",
    "StatusNotReady",
    "StatusekClientError",
    "StatusekRejected",
    "TokenConflict",
    "TopologyNotFound",
    "WaitTimeoutError",
    "rejection",
]

REPLY_TO = "amq.rabbitmq.reply-to"
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
# The message of a create answered for a token that exists with the same arguments.
ALREADY_EXISTS = "Instance already exists"

# Everything aio-pika and aiormq raise when a link or a channel goes away.
_LINK_ERRORS: tuple[type[BaseException], ...] = aio_pika.exceptions.CONNECTION_EXCEPTIONS
_LINK_ERRORS_OR_TIMEOUT: tuple[type[BaseException], ...] = (TimeoutError, *_LINK_ERRORS)


def check_url(url: str) -> None:
    """Raise InvalidURL unless `url` is an AMQP URL with a host."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname or not port_ok:
        raise InvalidURL(
            f"{mask_url(url)!r} is not an AMQP URL: expected amqp://user:password@host:5672/vhost"
        )


def check_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (one URL is a list of one), each checked by `check_url`.

    Raises InvalidURL for an empty entry, a URL that is not AMQP, or URLs that
    differ in user or vhost: they must be addresses of the same broker cluster.
    """
    try:
        urls = split_urls(value, variable="the AMQP URL")
    except ValueError as e:
        raise InvalidURL(str(e)) from None
    for url in urls:
        check_url(url)
    first = urlsplit(urls[0])
    for url in urls[1:]:
        parts = urlsplit(url)
        if (parts.username, parts.path.rstrip("/")) != (first.username, first.path.rstrip("/")):
            raise InvalidURL(
                f"{mask_url(url)!r} and {mask_url(urls[0])!r} differ in user or vhost: "
                "the URLs of a list are addresses of one broker cluster"
            )
    return urls


def _url_from_environment() -> str:
    """$STATUSEK_AMQP_URL, else the content of the file $STATUSEK_AMQP_URL_FILE (a mounted secret),
    else the local broker."""
    if url := os.environ.get("STATUSEK_AMQP_URL"):
        return url
    if path := os.environ.get("STATUSEK_AMQP_URL_FILE"):
        try:
            with open(path, encoding="utf-8") as secret:
                return secret.read().rstrip("\r\n")
        except OSError as e:
            raise InvalidURL(f"STATUSEK_AMQP_URL_FILE: cannot read {path!r}: {e.strerror or e}") from None
    return DEFAULT_URL


def expiration_for(seconds: float) -> float:
    """How long a request may wait in its queue when its caller waits `seconds` for the answer.

    A little less than `seconds` (a fifth, at most one second less), so that a
    worker that takes the request just before it expires still has time to
    answer before the caller gives up.
    """
    return max(0.001, seconds - min(1.0, seconds / 5))


class Created(NamedTuple):
    """What `create_instance` returns."""

    token: str
    created: bool  # False: the token existed with the same arguments; nothing changed


_LOST = object()  # an answer awaited on a link that went down; a notification stream interrupted
_CLOSED = object()


@dataclass(eq=False)
class _Link:
    """One connection to the broker with the client's channels on it."""

    connection: AbstractConnection
    channel: AbstractChannel
    # The same channel as aiormq's: requests are published and their replies consumed on it
    # directly, without aio-pika's message objects and the tasks its consumer adds per delivery.
    underlay: aiormq.Channel
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    events: AbstractChannel | None = None
    # Answers awaited on this link. When it goes they are given _LOST, so that a request waits
    # for its answer alone (one future, one timeout) and still hears of the loss at once.
    waiting: set[asyncio.Future[Any]] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return not self.lost.is_set()

    def mark_lost(self) -> None:
        self.lost.set()
        waiting, self.waiting = self.waiting, set()
        for future in waiting:
            if not future.done():
                future.set_result(_LOST)

    async def close(self) -> None:
        self.mark_lost()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 2)


def _nothing() -> None:
    return None


@dataclass(eq=False)
class _Subscription:
    """A listener for notifications and for the link going down and coming back."""

    on_event: Callable[[str, dict[str, Any]], None]
    on_lost: Callable[[], None] = _nothing
    on_restored: Callable[[], None] = _nothing
    on_closed: Callable[[], None] = _nothing


class Client:
    def __init__(
        self,
        url: str,
        *,
        commands_exchange: str = "statusek.commands",
        queries_exchange: str = "statusek.queries",
        events_exchange: str = "statusek.events",
        connect_timeout: float = 10,
        reconnect_max_delay: float = 2,
        name: str | None = None,
    ):
        # Several addresses (comma-separated): each link is made to the first of them that answers.
        self.urls = check_urls(url)
        self.url = self.urls[0]  # the address of the current link, else the first
        # Sent as user_id on every request: RabbitMQ checks it is the connection's user, and the
        # worker records it as the actor and judges the model's writer lists by it.
        self.user = unquote(urlsplit(self.url).username or "guest")
        self.name = name or f"statusek client {socket.gethostname()}:{os.getpid()}"
        self._commands = commands_exchange
        self._queries = queries_exchange
        self._events = events_exchange
        self._connect_timeout = connect_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._link: _Link | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._supervisor: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subscriptions: set[_Subscription] = set()
        self._events_wanted = False
        self._events_lock = asyncio.Lock()
        self.reconnects = 0  # links made again after a loss
        self.last_error: str | None = None  # why the last attempt to link failed

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        timeout: float = 10,
        commands_exchange: str = "statusek.commands",
        queries_exchange: str = "statusek.queries",
        events_exchange: str = "statusek.events",
    ) -> Client:
        """Connect to `url`, else $STATUSEK_AMQP_URL (or $STATUSEK_AMQP_URL_FILE's file), else the
        local broker, within `timeout` seconds.

        Raises InvalidURL for a URL that is not AMQP, TopologyNotFound when
        the vhost has no statusek exchanges, and BrokerUnreachable when the
        broker cannot be reached or refuses the login or the vhost.
        """
        client = cls(
            url or _url_from_environment(),
            commands_exchange=commands_exchange,
            queries_exchange=queries_exchange,
            events_exchange=events_exchange,
            connect_timeout=timeout,
        )
        await client._start(timeout)
        return client

    @property
    def vhost(self) -> str:
        return url_location(self.url)["path"] or "/"

    @property
    def location(self) -> str:
        where = url_location(self.url)
        return f"{where['host']}:{where['port'] or 5672}"

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.up

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.on_closed()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._link is not None:
            await self._link.close()
        self._ready.set()  # wakes whoever waits for a link: they see the client closed

    # Commands

    async def create_instance(
        self,
        object_name: str,
        *,
        instance_token: uuid.UUID | str | None = None,
        instance_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        labels: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Created:
        """Create an instance; `created` is False when `instance_token` existed with these arguments."""
        body: dict[str, Any] = {"object_name": object_name}
        if instance_token is not None:
            body["instance_token"] = str(instance_token)
        if instance_timeout is not None:
            body["instance_timeout"] = instance_timeout
        if heartbeat_timeout is not None:
            body["heartbeat_timeout"] = heartbeat_timeout
        if labels:
            body["labels"] = labels
        reply = await self.request(self._commands, "create", body, timeout=timeout)
        data = _data(reply)
        return Created(str(data["instance_token"]), reply.get("message") != ALREADY_EXISTS)

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
        """Create an instance and return its token (idempotent with `instance_token`)."""
        created = await self.create_instance(
            object_name,
            instance_token=instance_token,
            instance_timeout=instance_timeout,
            heartbeat_timeout=heartbeat_timeout,
            labels=labels,
            timeout=timeout,
        )
        return created.token

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

    async def set_global_status(
        self, status_name: str, status_message: str | None = None, *, timeout: float = 10
    ) -> None:
        """Record a named event of no instance (the original Statusek's setGlobalStatus)."""
        body: dict[str, Any] = {"status_name": status_name}
        if status_message is not None:
            body["status_message"] = status_message
        await self.call(self._commands, "set-global-status", body, timeout=timeout)

    # Queries

    async def is_set(self, token: str, status_name: str, *, timeout: float = 10) -> bool:
        data = await self.call(
            self._queries,
            "is-set",
            {"instance_token": str(token), "status_name": status_name},
            timeout=timeout,
        )
        return bool(data["status_is_set"])

    async def is_ready(self, token: str, status_name: str, *, timeout: float = 10) -> tuple[bool, str]:
        data = await self.call(
            self._queries,
            "is-ready",
            {"instance_token": str(token), "status_name": status_name},
            timeout=timeout,
        )
        return bool(data["status_is_ready_to_set"]), str(data["status_is_ready_to_set_description"])

    async def is_finished(self, token: str, *, timeout: float = 10) -> tuple[bool, str | None]:
        data = await self.call(self._queries, "is-finished", {"instance_token": str(token)}, timeout=timeout)
        return bool(data["instance_is_finished"]), data.get("instance_is_finished_description")

    async def get_events(
        self, token: str, *, after_seq: int = 0, limit: int | None = None, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """The events of `token` with a seq above `after_seq`, oldest first: all, or the first `limit`.

        Follows the pages of `get-events` for as many requests as it takes; `timeout` bounds them
        all. To read a long log page by page, pass the last seq seen as `after_seq` with a `limit`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        events: list[dict[str, Any]] = []
        body: dict[str, Any] = {"instance_token": str(token)}
        if after_seq:
            body["after_seq"] = after_seq
        while limit is None or len(events) < limit:
            if limit is not None:
                body["limit"] = min(MAX_EVENTS_PAGE, limit - len(events))
            left = deadline - loop.time()
            if left <= 0:
                raise NoAnswerError("get-events", timeout, self.vhost)
            data = await self.call(self._queries, "get-events", body, timeout=left)
            events.extend(data["events"])
            after = data.get("next_after_seq")
            if after is None:
                break
            # The first page had the worker's default size (a worker before paging takes no
            # paging fields, and answers with every event); the next ones are as large as allowed.
            body = {**body, "after_seq": after, "limit": MAX_EVENTS_PAGE}
        return events

    async def get_instance(self, token: str, *, timeout: float = 10) -> dict[str, Any]:
        return await self.call(self._queries, "get-instance", {"instance_token": str(token)}, timeout=timeout)

    async def get_report(
        self,
        object_name: str,
        *,
        since: date | str | None = None,
        until: date | str | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Timing figures of `object_name`'s instances finished from day `since` to day `until` (UTC,
        both inclusive; open-ended when None): counts by finish reason, create-to-finish and
        per-status durations (p50, p95, max, mean), SLA breaches."""
        body: dict[str, Any] = {"object_name": object_name}
        if since is not None:
            body["since"] = str(since)
        if until is not None:
            body["until"] = str(until)
        return await self.call(self._queries, "get-report", body, timeout=timeout)

    async def get_global_events(
        self,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        status_name: str | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """One page of global events, oldest first.

        The reply data: `events` (those with a seq above `after_seq`) and
        `next_after_seq`, to pass as `after_seq` for the next page (None after the last).
        """
        body: dict[str, Any] = {"after_seq": after_seq}
        if limit is not None:
            body["limit"] = limit
        if status_name is not None:
            body["status_name"] = status_name
        return await self.call(self._queries, "get-global-events", body, timeout=timeout)

    async def find_instances(
        self,
        *,
        object_name: str | None = None,
        labels: dict[str, str] | None = None,
        finished: bool | None = None,
        finish_reason: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        after: str | None = None,
        limit: int | None = None,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """One page of the instances matching every filter given, oldest first.

        The reply data: `instances` and `next_after`, to pass as `after` for the next page (None
        after the last). Times are ISO 8601 strings or datetimes with a time zone;
        `created_after` is inclusive, `created_before` exclusive.
        """
        body: dict[str, Any] = {}
        for name, value in (
            ("object_name", object_name),
            ("labels", labels),
            ("finished", finished),
            ("finish_reason", finish_reason),
            ("created_after", _instant(created_after, "created_after")),
            ("created_before", _instant(created_before, "created_before")),
            ("after", after),
            ("limit", limit),
        ):
            if value is not None:
                body[name] = value
        return await self.call(self._queries, "find-instances", body, timeout=timeout)

    def heartbeat(self, token: str, every: float, message: str | None = None) -> Heartbeat:
        """Ping `token` every `every` seconds while the block runs (see `Heartbeat`)."""
        return Heartbeat(self, str(token), every, message)

    # Notifications

    async def wait_finished(self, token: str, timeout: float, *, answer_within: float | None = None) -> str:
        """The finish reason of `token`, from its `instance-finished` notification.

        Subscribes first, then asks once (the instance may have finished
        already), then waits for the notification: no polling. When the link
        is lost and made again meanwhile, it asks again. Everything within
        `timeout` seconds; `answer_within` bounds the question alone.

        Raises WaitTimeoutError when the instance is still open at the end,
        NoAnswerError when no worker answers the question, BrokerUnreachable
        when the link is down at the end.
        """
        token = str(token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: asyncio.Future[str] = loop.create_future()
        restored = asyncio.Event()

        def on_event(kind: str, body: dict[str, Any]) -> None:
            if kind == "instance-finished" and body.get("instance_token") == token and not found.done():
                found.set_result(str(body["reason"]))

        subscription = _Subscription(on_event, on_restored=restored.set, on_closed=restored.set)
        self._subscriptions.add(subscription)
        try:
            while True:
                restored.clear()
                await self._events_link(deadline, "the finish", timeout)
                left = deadline - loop.time()
                if left <= 0:
                    raise WaitTimeoutError(token, timeout)
                ask = left if answer_within is None else min(left, answer_within)
                finished, reason = await self.is_finished(token, timeout=ask)
                if finished and reason:
                    return reason
                if await _first(found, restored, deadline - loop.time()) is found:
                    return found.result()
                if self._closed:
                    raise BrokerUnreachable("the client was closed while waiting")
                if restored.is_set():
                    continue  # a finish published while the link was down is lost: ask again
                if not self.connected:
                    raise self._lost_for(timeout, "the finish")
                raise WaitTimeoutError(token, timeout)
        finally:
            self._subscriptions.discard(subscription)

    async def notifications(
        self,
        *,
        object_name: str | None = None,
        instance_token: str | None = None,
        types: set[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """Yield (type, body) of notifications matching every filter given.

        Raises NotificationsInterrupted when the link to the broker is lost
        (what is published until it is back is lost): iterate again to
        resume. Subscribing waits at most `timeout` seconds for the link
        (default: the client's connect timeout), then raises BrokerUnreachable.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        armed = False

        def on_event(kind: str, body: dict[str, Any]) -> None:
            if types and kind not in types:
                return
            if object_name and body.get("object_name") != object_name:
                return
            if instance_token and body.get("instance_token") != str(instance_token):
                return
            queue.put_nowait((kind, body))

        def on_lost() -> None:
            if armed:
                queue.put_nowait(_LOST)

        subscription = _Subscription(on_event, on_lost=on_lost, on_closed=lambda: queue.put_nowait(_CLOSED))
        self._subscriptions.add(subscription)
        try:
            wait = self._connect_timeout if timeout is None else timeout
            await self._events_link(loop.time() + wait, "notifications", wait)
            armed = True
            while True:
                item = await queue.get()
                if item is _LOST:
                    raise NotificationsInterrupted(
                        f"lost the link to RabbitMQ at {self.location}: notifications published "
                        "until it is back are missing; iterate notifications() again to resume"
                    )
                if item is _CLOSED:
                    return
                yield cast(tuple[str, dict[str, Any]], item)
        finally:
            self._subscriptions.discard(subscription)

    async def consumers(self, queue: str, *, timeout: float = 1) -> int | None:
        """How many consumers `queue` has (None if that cannot be told within `timeout`)."""
        link = self._link
        if link is None or not link.up:
            return None
        try:
            async with asyncio.timeout(timeout):
                channel = await link.connection.channel(publisher_confirms=False)
                try:
                    declared = await channel.declare_queue(queue, passive=True)
                    return int(declared.declaration_result.consumer_count or 0)
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
        except _LINK_ERRORS_OR_TIMEOUT:
            return None

    # Plumbing

    async def call(
        self, exchange: str, routing_key: str, body: dict[str, Any], *, timeout: float = 10
    ) -> dict[str, Any]:
        """Publish a request and return its reply's data, or raise (see `request`)."""
        return _data(await self.request(exchange, routing_key, body, timeout=timeout))

    async def request(
        self,
        exchange: str,
        routing_key: str,
        body: dict[str, Any],
        *,
        timeout: float = 10,
        message_id: str | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Publish a request with confirms and return the whole reply (status, code, message, data).

        `user_id` publishes it as another user than the client's (RabbitMQ allows
        that only to a user with the `impersonator` tag; `statusek gateway` uses it).

        Waits at most `timeout` seconds. The request carries a deadline a little
        before that (`expiration_for`): as its expiration, so the broker drops it
        unconsumed, and as header `x-statusek-deadline`, so a worker that takes it
        later refuses it (`EXPIRED`) instead of applying it. The margin between
        the two is the time a worker that took it in time has to answer. When the
        link is lost before the answer comes, the request is published again on
        the next link with the same `message_id` and deadline: a command is still
        applied at most once.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        expires_at = (datetime.now(UTC) + timedelta(seconds=expiration_for(timeout))).isoformat()
        correlation_id = uuid.uuid4().hex
        message_id = message_id or uuid.uuid4().hex
        payload = json.dumps(body).encode()
        headers: FieldTable = {**routing_headers(body), DEADLINE_HEADER: expires_at}
        sent = False
        try:
            while True:
                link = await self._link_by(deadline, f"the answer to {routing_key}", timeout, sent=sent)
                left = deadline - loop.time()
                if left <= 0:
                    raise NoAnswerError(routing_key, timeout, self.vhost)
                # A future per attempt: the one of a lost link is given _LOST (`_Link.mark_lost`).
                answer: asyncio.Future[Any] = loop.create_future()
                self._pending[correlation_id] = answer
                link.waiting.add(answer)
                properties = aiormq.spec.Basic.Properties(
                    content_type="application/json",
                    headers=headers,
                    delivery_mode=PERSISTENT,
                    correlation_id=correlation_id,
                    message_id=message_id,
                    reply_to=REPLY_TO,
                    user_id=user_id or self.user,
                    expiration=str(max(1, int(expiration_for(left) * 1000))),  # milliseconds
                )
                try:
                    async with asyncio.timeout_at(deadline):
                        try:
                            # wait=False: no turn through aiormq's writer before the next publish may go,
                            # so the requests of one loop iteration leave together; the confirm is awaited.
                            await link.underlay.basic_publish(
                                payload,
                                exchange=exchange,
                                routing_key=routing_key,
                                properties=properties,
                                mandatory=True,
                                wait=False,
                            )
                        except aiormq.exceptions.ChannelNotFoundEntity as e:
                            raise TopologyNotFound(self.vhost, self.location, exchange) from e
                        except aiormq.exceptions.ChannelAccessRefused as e:
                            raise self._refused("publish to", exchange) from e
                        except _LINK_ERRORS:
                            link.mark_lost()  # the supervisor makes a new link; publish again there
                            continue
                        sent = True
                        reply = await answer
                except TimeoutError:
                    if link.up:
                        raise NoAnswerError(routing_key, timeout, self.vhost) from None
                    continue  # lost at the end: the next turn says so, naming the link
                finally:
                    link.waiting.discard(answer)
                if reply is _LOST:
                    continue  # the link went down before the answer came: publish again on the next one
                if reply.get("code") == "EXPIRED":
                    # Refused unapplied: the same outcome as no answer in time.
                    raise NoAnswerError(routing_key, timeout, self.vhost)
                return cast(dict[str, Any], reply)
        finally:
            self._pending.pop(correlation_id, None)

    def _refused(self, doing: str, exchange: str) -> BrokerUnreachable:
        user = urlsplit(self.url).username or "guest"
        return BrokerUnreachable(
            f"user {user!r} may not {doing} {exchange!r} on vhost {self.vhost!r}: "
            "ask for the permission, or use another user"
        )

    def _lost_for(self, seconds: float, doing: str, *, sent: bool = False) -> BrokerUnreachable:
        if self._closed:
            return BrokerUnreachable("the client is closed")
        why = f" (last attempt: {self.last_error})" if self.last_error else ""
        maybe = "; the request was sent and may have been applied (repeating it is safe)" if sent else ""
        return BrokerUnreachable(
            f"no link to RabbitMQ at {self.location} for {doing}, and none came back within "
            f"{seconds:g} s{why}{maybe}",
            maybe_applied=sent,
        )

    async def _link_by(self, deadline: float, doing: str, bound: float, *, sent: bool = False) -> _Link:
        """The current link, waiting for one until `deadline` (loop time; `bound` seconds from the start)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise self._lost_for(0, doing)
            link = self._link
            if link is not None and link.up:
                return link
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise self._lost_for(bound, doing, sent=sent) from None

    async def _start(self, timeout: float) -> None:
        link = await self._open(timeout)
        try:
            async with asyncio.timeout(timeout):
                await self._check_topology(link)
        except TimeoutError:
            await link.close()
            raise BrokerUnreachable(
                f"cannot reach RabbitMQ at {mask_url(self.url)}: {describe(TimeoutError(), self.url)}"
            ) from None
        except BaseException:
            await link.close()
            raise
        self._link = link
        self._ready.set()
        self._supervisor = asyncio.create_task(self._supervise(), name="statusek-client-link")

    async def _open(self, timeout: float) -> _Link:
        """A new link with the reply consumer (and the notification queue, if wanted)."""
        try:
            async with asyncio.timeout(timeout):
                # Each address gets its share of the time; a refused one costs nothing.
                connection, url = await connect_first(
                    self.urls,
                    timeout=timeout / len(self.urls),
                    client_properties={"connection_name": self.name},
                )
                self.url = url
                try:
                    channel = await connection.channel(publisher_confirms=True)
                    link = _Link(
                        connection, channel, cast(aiormq.Channel, await channel.get_underlay_channel())
                    )
                    connection.close_callbacks.add(lambda *_: link.mark_lost())
                    channel.close_callbacks.add(lambda *_: link.mark_lost())
                    if connection.is_closed or channel.is_closed:  # closed before the callbacks were in
                        raise aiormq.exceptions.ChannelInvalidStateError("the link closed while it was made")
                    await link.underlay.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
                    if self._events_wanted:
                        await self._bind_events(link)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await connection.close()
                    raise
        except NoBrokerReachable as e:  # several addresses: it names each (passwords masked)
            self.last_error = str(e)
            raise BrokerUnreachable(f"cannot reach RabbitMQ: {e}") from e
        except _LINK_ERRORS_OR_TIMEOUT as e:
            self.last_error = describe(e, self.url)
            raise BrokerUnreachable(
                f"cannot reach RabbitMQ at {mask_url(self.url)}: {describe(e, self.url)}"
            ) from e
        return link

    async def _check_topology(self, link: _Link) -> None:
        """A wrong vhost shows here, as one clear error, rather than at the first publish."""
        channel = await link.connection.channel(publisher_confirms=False)
        try:
            for name in (self._commands, self._queries, self._events):
                try:
                    await channel.get_exchange(name, ensure=True)
                except aio_pika.exceptions.ChannelNotFoundEntity as e:
                    raise TopologyNotFound(self.vhost, self.location, name) from e
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _supervise(self) -> None:
        """Make the link again whenever it is lost, until the client is closed."""
        while not self._closed:
            link = self._link
            assert link is not None
            await link.lost.wait()
            self._ready.clear()
            for subscription in list(self._subscriptions):
                subscription.on_lost()
            await link.close()
            delay = 0.1
            while True:
                try:
                    new = await self._open(self._connect_timeout)
                    break
                except BrokerUnreachable:
                    pass  # last_error says why
                except Exception as e:  # a surprise: keep trying all the same
                    self.last_error = f"{type(e).__name__}: {e}"
                await asyncio.sleep(delay)
                delay = min(self._reconnect_max_delay, delay * 2)
            self._link = new
            self.last_error = None
            self.reconnects += 1
            self._ready.set()
            for subscription in list(self._subscriptions):
                subscription.on_restored()

    async def _events_link(self, deadline: float, doing: str, bound: float) -> _Link:
        """The current link, with the notification queue bound on it."""
        self._events_wanted = True
        while True:
            link = await self._link_by(deadline, doing, bound)
            if link.events is not None:
                return link
            async with self._events_lock:
                if link.events is None and link.up:
                    try:
                        await self._bind_events(link)
                    except aio_pika.exceptions.ChannelNotFoundEntity as e:
                        raise TopologyNotFound(self.vhost, self.location, self._events) from e
                    except aiormq.exceptions.ChannelAccessRefused as e:
                        raise self._refused("read notifications from", self._events) from e
                    except _LINK_ERRORS:
                        link.mark_lost()

    async def _bind_events(self, link: _Link) -> None:
        channel = await link.connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(lambda *_: link.mark_lost())
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._events, routing_key="")
        await queue.consume(self._on_event, no_ack=True)
        link.events = channel

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        future = self._pending.get(message.header.properties.correlation_id or "")
        if future is not None and not future.done():
            with contextlib.suppress(ValueError):
                future.set_result(json.loads(message.body))

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            body = json.loads(message.body)
        except ValueError:
            return
        for subscription in list(self._subscriptions):
            subscription.on_event(message.type or "", body)


def _instant(value: datetime | str | None, name: str) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}: give a time zone (a naive datetime is ambiguous)")
        return value.isoformat()
    return value


def _data(reply: dict[str, Any]) -> dict[str, Any]:
    """The data of a successful reply; a refusal raises its exception."""
    if not reply.get("status"):
        raise rejection(str(reply.get("code")), str(reply.get("message")), reply.get("data"))
    return dict(reply.get("data") or {})


async def _first(future: asyncio.Future[Any], event: asyncio.Event, timeout: float) -> object | None:
    """Wait until `future` is done or `event` is set, at most `timeout` seconds; returns which."""
    if future.done():
        return future
    if event.is_set():
        return event
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({future, waiter}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if future.done():
        return future
    return event if event.is_set() else None


class Heartbeat:
    """Keeps an instance alive while a block of work runs, and stops the work if it ends.

        async with client.heartbeat(token, every=5) as beat:
            for page in pages:
                beat.progress(f"page {page} of {len(pages)}")
                await work(page)

    A ping answered INSTANCE_IS_FINISHED (cancelled, timed out elsewhere)
    cancels the block, and the `async with` raises InstanceFinishedError;
    any other refusal (a message over the size limit, say) stops it the same
    way with its own exception. A ping that gets no answer (broker or worker
    away) is tried again at the next beat, each bounded by `every`: after a
    link cut the pings resume, and if the cut outlasted the heartbeat
    timeout the first answer is INSTANCE_IS_FINISHED.
    """

    def __init__(self, client: Client, token: str, every: float, message: str | None):
        self._client = client
        self.token = token
        self.every = every
        self.message = message
        self.deadline: str | None = None
        self.pings = 0
        self.missed = 0  # beats whose ping got no answer
        self.failure: StatusekRejected | None = None
        self._block: asyncio.Task[Any] | None = None
        self._pinger: asyncio.Task[None] | None = None

    @property
    def finished(self) -> InstanceFinishedError | None:
        """The refusal that ended the block, when it was INSTANCE_IS_FINISHED."""
        return self.failure if isinstance(self.failure, InstanceFinishedError) else None

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
            except StatusekRejected as e:
                self.failure = e
                if self._block is not None:
                    self._block.cancel()
                return
            except (TimeoutError, ConnectionError, StatusekClientError):
                self.missed += 1  # the next beat tries again; the deadline has slack for this

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self.failure is not None and exc_type is asyncio.CancelledError and self._block is not None:
            self._block.uncancel()
            raise self.failure
        return False
