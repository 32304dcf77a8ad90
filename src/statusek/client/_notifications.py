"""Notifications: subscribing to the events exchange, and waiting for an instance to finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import aio_pika
import aiormq

from statusek.adapters.rabbitmq.errors import dropped_link_as_error
from statusek.client._link import _LINK_ERRORS, _LOST, _Link, _Subscription
from statusek.client._queries import _Queries
from statusek.exceptions import (
    BrokerUnreachable,
    NotificationsInterrupted,
    TopologyNotFound,
    WaitTimeoutError,
)

_CLOSED = object()


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


class _Notifications(_Queries):
    """Notifications as a stream, and the wait for an instance's finish built on them."""

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
                        async with dropped_link_as_error():
                            await self._bind_events(link)
                    except aio_pika.exceptions.ChannelNotFoundEntity as e:
                        raise TopologyNotFound(self.vhost, self.location, self._events) from e
                    except aiormq.exceptions.ChannelAccessRefused as e:
                        raise self._refused("read notifications from", self._events) from e
                    except _LINK_ERRORS:
                        link.mark_lost()
