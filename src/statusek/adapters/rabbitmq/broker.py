"""RabbitMQ: the topology of SPEC section 4, publishing with confirms, and settling.

aio-pika and aiormq errors are translated to `BrokerUnavailable` here.
"""

from __future__ import annotations

import asyncio
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
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

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
    """One robust connection; a confirming channel for output, one per consumer."""

    def __init__(self, connection: AbstractRobustConnection, names: Names):
        self.connection = connection
        self.names = names
        self._out: AbstractChannel | None = None
        self._events: AbstractExchange | None = None

    @classmethod
    async def connect(cls, url: str, names: Names, *, name: str = "statusek") -> Broker:
        async with translated():
            connection = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        return cls(connection, names)

    async def close(self) -> None:
        async with translated():
            await self.connection.close()

    async def declare(self) -> None:
        """Declare the whole topology; idempotent, so every replica does it at start."""
        n = self.names
        async with translated():
            channel = await self.connection.channel()
            try:
                for exchange, queue, keys, arguments in (
                    (
                        n.commands,
                        n.commands,
                        COMMANDS,
                        # One active consumer at a time keeps commands in publish
                        # order across replicas; the others stand by (README).
                        {"x-queue-type": "quorum", "x-single-active-consumer": True},
                    ),
                    (n.queries, n.queries, QUERIES, {}),
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

    async def output(self) -> AbstractChannel:
        if self._out is None or self._out.is_closed:
            async with translated():
                self._out = await self.connection.channel(publisher_confirms=True)
                self._events = await self._out.get_exchange(self.names.events, ensure=False)
        return self._out

    async def consume(
        self,
        queue_name: str,
        prefetch: int,
        on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
    ) -> Consumer:
        async with translated():
            channel = await self.connection.channel()
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
