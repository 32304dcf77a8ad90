"""RabbitMQ: the topology of SPEC section 4, publishing with confirms, and settling.

aio-pika and aiormq errors are translated to `BrokerUnavailable` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pamqp.common import FieldTable

from statusek.core.errors import BrokerUnavailable
from statusek.core.messages import COMMANDS, QUERIES, Reply
from statusek.core.views import Notification

log = structlog.get_logger(__name__)

_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for "channel closed" in a few places
)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except _BROKER_ERRORS as e:
        raise BrokerUnavailable(f"rabbitmq unavailable: {type(e).__name__}: {e}") from e


# One active consumer at a time keeps commands in publish order across
# replicas; the others stand by (README, "Ordering").
COMMANDS_QUEUE_ARGUMENTS: FieldTable = {"x-queue-type": "quorum", "x-single-active-consumer": True}


@dataclass(frozen=True, slots=True)
class Names:
    commands: str = "statusek.commands"
    queries: str = "statusek.queries"
    events: str = "statusek.events"
    dead_letter: str = "statusek.dead-letter"
    rejected: str = "statusek.rejected"

    def unrouted(self, exchange: str) -> str:
        return f"{exchange}.unrouted"


@dataclass(frozen=True, slots=True)
class Consumer:
    channel: AbstractChannel
    queue: AbstractQueue
    tag: str

    async def cancel(self) -> None:
        """Stop new deliveries; those held stay ours until settled."""
        async with translated():
            await self.queue.cancel(self.tag)

    async def close(self) -> None:
        """Close the channel: every unsettled delivery returns to the queue, in order."""
        async with translated():
            await self.channel.close()


class Broker:
    """A plain connection that the worker reopens itself, and its channels.

    Reconnection is ours rather than aio-pika's RobustConnection: each attempt
    has a timeout, consumers are registered anew on every connection, and
    deliveries of a dead connection are recognised as stale (never acked on
    a new channel). RobustConnection could stall for minutes after an attempt
    that the peer closed during the handshake.
    """

    def __init__(self, url: str, names: Names, *, name: str = "statusek", connect_timeout: float = 10):
        self.url = url
        self.names = names
        self._name = name
        self._connect_timeout = connect_timeout
        self.connection: AbstractConnection | None = None
        self._lost = asyncio.Event()
        self._out: AbstractChannel | None = None
        self._events: AbstractExchange | None = None

    @classmethod
    async def connect(cls, url: str, names: Names, *, name: str = "statusek") -> Broker:
        broker = cls(url, names, name=name)
        await broker.open()
        return broker

    async def open(self) -> None:
        """(Re)connect; the previous connection, if any, is dropped."""
        await self.close()
        async with translated():
            connection = await asyncio.wait_for(
                aio_pika.connect(self.url, client_properties={"connection_name": self._name}),
                self._connect_timeout,
            )
        # aio-pika's closed() only resolves on an explicit close; a lost link
        # shows up as a close callback.
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        self.connection, self._lost = connection, lost
        self._out = None
        self._events = None

    @property
    def is_open(self) -> bool:
        return self.connection is not None and not self._lost.is_set() and not self.connection.is_closed

    async def closed(self) -> None:
        """Return when the current connection is lost or closed."""
        await self._lost.wait()

    async def close(self) -> None:
        self._lost.set()
        connection, self.connection = self.connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self._connect_timeout)

    async def declare(self) -> None:
        """Declare the whole topology; idempotent, so every replica does it at start."""
        n = self.names
        async with translated():
            channel = await self._require().channel()
            try:
                for exchange, queue, keys, arguments in (
                    (
                        n.commands,
                        n.commands,
                        COMMANDS,
                        COMMANDS_QUEUE_ARGUMENTS,
                    ),
                    (n.queries, n.queries, QUERIES, None),
                ):
                    # Unknown routing keys would be dropped by a direct exchange;
                    # the alternate exchange brings them to the worker to dead-letter.
                    unrouted = await channel.declare_exchange(
                        n.unrouted(exchange), aio_pika.ExchangeType.FANOUT, durable=True
                    )
                    direct = await channel.declare_exchange(
                        exchange,
                        aio_pika.ExchangeType.DIRECT,
                        durable=True,
                        arguments={"alternate-exchange": unrouted.name},
                    )
                    q = await channel.declare_queue(queue, durable=True, arguments=arguments)
                    await q.bind(unrouted, routing_key="")
                    for key in keys:
                        await q.bind(direct, routing_key=key)
                await channel.declare_exchange(n.events, aio_pika.ExchangeType.FANOUT, durable=True)
                for queue in (n.dead_letter, n.rejected):
                    await channel.declare_queue(queue, durable=True)
            finally:
                await channel.close()

    def _require(self) -> AbstractConnection:
        if self.connection is None or not self.is_open:
            raise BrokerUnavailable("rabbitmq unavailable: not connected")
        return self.connection

    async def output(self) -> AbstractChannel:
        if self._out is None or self._out.is_closed:
            async with translated():
                self._out = await self._require().channel(publisher_confirms=True)
                self._events = await self._out.get_exchange(self.names.events, ensure=False)
        return self._out

    async def consume(
        self,
        queue_name: str,
        prefetch: int,
        on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
    ) -> Consumer:
        async with translated():
            channel = await self._require().channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(queue_name, ensure=False)
            tag = await queue.consume(on_message)
        return Consumer(channel, queue, tag)

    async def reply(self, reply_to: str, correlation_id: str | None, reply: Reply) -> None:
        await self._publish_default(
            reply_to,
            aio_pika.Message(
                reply.model_dump_json().encode(),
                content_type="application/json",
                correlation_id=correlation_id,
                type="reply",
            ),
        )

    async def park(self, queue: str, original: AbstractIncomingMessage, headers: Mapping[str, Any]) -> None:
        """Copy a delivery to a holding queue with the reason in its headers."""
        await self._publish_default(
            queue,
            aio_pika.Message(
                original.body,
                headers={**(original.headers or {}), **headers},
                content_type=original.content_type,
                correlation_id=original.correlation_id,
                message_id=original.message_id,
                reply_to=original.reply_to,
                type=original.type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
        )

    async def publish_notifications(self, notifications: Sequence[Notification]) -> None:
        """Publish and wait for every confirm; raises if any is not confirmed."""
        await self.output()
        assert self._events is not None
        exchange = self._events
        async with translated():
            confirms = [
                exchange.publish(
                    aio_pika.Message(
                        json.dumps(n.body).encode(),
                        content_type="application/json",
                        type=n.type,
                        message_id=n.message_id,
                        headers=dict(n.headers),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="",
                )
                for n in notifications
            ]
            await asyncio.gather(*confirms)

    async def _publish_default(self, routing_key: str, message: aio_pika.Message) -> None:
        channel = await self.output()
        async with translated():
            await channel.default_exchange.publish(message, routing_key=routing_key)
