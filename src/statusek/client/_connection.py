"""Connecting: the link to the broker made, checked, watched and made again when it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.rabbitmq.corked import CorkedConnection
from statusek.adapters.rabbitmq.endpoints import NoBrokerReachable, connect_first
from statusek.adapters.rabbitmq.errors import describe, dropped_link_as_error
from statusek.client._link import _LINK_ERRORS_OR_TIMEOUT, REPLY_TO, _Link, _Subscription
from statusek.client._urls import check_urls
from statusek.exceptions import BrokerUnreachable, TopologyNotFound
from statusek.redact import mask_url, url_location


class _Connection:
    """The client's link to the broker: its addresses, its state, and the consumers on it."""

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

    async def consumers(self, queue: str, *, timeout: float = 1) -> int | None:
        """How many consumers `queue` has (None if that cannot be told within `timeout`)."""
        link = self._link
        if link is None or not link.up:
            return None
        try:
            async with asyncio.timeout(timeout):
                async with dropped_link_as_error():
                    channel = await link.connection.channel(publisher_confirms=False)
                    try:
                        declared = await channel.declare_queue(queue, passive=True)
                        return int(declared.declaration_result.consumer_count or 0)
                    finally:
                        with contextlib.suppress(Exception):
                            await channel.close()
        except _LINK_ERRORS_OR_TIMEOUT:
            return None

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
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._ready.wait()
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
                    connection_class=CorkedConnection,
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
