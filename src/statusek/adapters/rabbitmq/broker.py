"""RabbitMQ: the topology of SPEC section 4, publishing with confirms, and settling.

aio-pika and aiormq errors are translated to `BrokerUnavailable` (errors.py's `translated`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

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

from statusek.adapters.rabbitmq.corked import CorkedConnection
from statusek.adapters.rabbitmq.endpoints import NoBrokerReachable, connect_first, split_urls
from statusek.adapters.rabbitmq.errors import describe, translated
from statusek.adapters.rabbitmq.properties import Properties
from statusek.core.errors import BrokerUnavailable, TooLargeForBroker
from statusek.core.messages import COMMANDS, QUERIES, Reply
from statusek.core.partitions import INSTANCE_TOKEN_HEADER
from statusek.core.views import Notification
from statusek.redact import mask_secrets

log = structlog.get_logger(__name__)


class PartitionerMissing(BrokerUnavailable):
    """The broker lacks the consistent-hash exchange that several partitions need."""


class Unroutable(BrokerUnavailable):
    """The broker returned a mandatory message: no queue was bound to take it."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the queues, declared as queue arguments (policies may tighten them)."""

    delivery_limit: int = 20
    holding_max_length: int = 100_000
    query_ttl_ms: int = 60_000
    dead_letter_body_bytes: int = 64 * 1024
    # Named queues a reply may go to besides direct reply-to and server-named ones
    # (a full-match regex; None: none), see `settle.reply_queue_allowed`.
    reply_queue_pattern: str | None = None


ORIGINAL_SIZE_HEADER = "x-statusek-original-size"
TRANSIENT, PERSISTENT = int(aio_pika.DeliveryMode.NOT_PERSISTENT), int(aio_pika.DeliveryMode.PERSISTENT)
TRUNCATED_HEADER = "x-statusek-truncated"


@dataclass(frozen=True, slots=True)
class Names:
    commands: str = "statusek.commands"
    queries: str = "statusek.queries"
    events: str = "statusek.events"
    dead_letter: str = "statusek.dead-letter"  # a queue, and the broker's dead-letter exchange
    rejected: str = "statusek.rejected"
    # Command partitions. Partition 0 is the `commands` queue itself, so one partition is
    # the original layout and raising the count keeps the queue publishers may know.
    partitions: int = 1

    def unrouted(self, exchange: str) -> str:
        return f"{exchange}.unrouted"

    def partition(self, index: int) -> str:
        return self.commands if index == 0 else f"{self.commands}.{index}"

    @property
    def command_queues(self) -> list[str]:
        return [self.partition(i) for i in range(self.partitions)]

    @property
    def partitioner(self) -> str:
        """The consistent-hash exchange that spreads commands by their instance_token header."""
        return f"{self.commands}.partitions"

    @property
    def headerless(self) -> str:
        """Where the partitioner sends a command without the header: partition 0."""
        return f"{self.commands}.headerless"


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

    def __init__(
        self,
        url: str,
        names: Names,
        *,
        name: str = "statusek",
        limits: Limits | None = None,
        connect_timeout: float = 10,
    ):
        # STATUSEK_AMQP_URL may list several nodes' URLs, comma-separated: open() fails over between them.
        self.urls = split_urls(url)
        self.url = self.urls[0]  # the URL of the current (else the first) connection
        self.names = names
        self.limits = limits or Limits()
        # The plugin's exchange type (rabbitmq_consistent_hash_exchange); a test names a missing one.
        self.partitioner_type = "x-consistent-hash"
        # Known only when our declaration of the command queue was accepted.
        self.delivery_limit_in_force: int | None = None
        self._name = name
        self._connect_timeout = connect_timeout
        self.connection: AbstractConnection | None = None
        self._lost = asyncio.Event()
        self._out: AbstractChannel | None = None
        # Called with the queue name when a reply is refused (settle.answer): the worker counts it.
        self.on_reply_refused: Callable[[str], None] = lambda _queue: None
        # Called with the queue name when a copy was parked in a holding queue declared again (park).
        self.on_holding_queue_redeclared: Callable[[str], None] = lambda _queue: None

    @classmethod
    async def connect(
        cls, url: str, names: Names, *, name: str = "statusek", limits: Limits | None = None
    ) -> Broker:
        broker = cls(url, names, name=name, limits=limits)
        await broker.open()
        return broker

    async def open(self) -> None:
        """(Re)connect; the previous connection, if any, is dropped."""
        await self.close()
        async with translated():
            try:
                connection, self.url = await connect_first(
                    self.urls,
                    timeout=self._connect_timeout,
                    client_properties={"connection_name": self._name},
                    connection_class=CorkedConnection,
                )
            except NoBrokerReachable as e:  # several addresses: it names each (passwords masked)
                raise BrokerUnavailable(f"rabbitmq unavailable: {e}") from e
        # aio-pika's closed() only resolves on an explicit close; a lost link
        # shows up as a close callback.
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        self.connection, self._lost = connection, lost
        self._out = None

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
                async with asyncio.timeout(self._connect_timeout):
                    await connection.close()

    async def declare(self) -> None:
        """Declare the whole topology; idempotent, so every replica does it at start."""
        n, limits = self.names, self.limits
        # A poison command (one that keeps failing its window) is given back at most
        # `delivery_limit` times, then the broker dead-letters it itself (x-death
        # header, reason delivery_limit), at least once.
        commands_arguments: FieldTable = {
            "x-queue-type": "quorum",
            # One active consumer at a time keeps commands in publish order across
            # replicas; the others stand by (docs/guarantees.md, "Ordering").
            "x-single-active-consumer": True,
            "x-delivery-limit": limits.delivery_limit,
            "x-dead-letter-exchange": n.dead_letter,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        # Nobody waits for a query older than its caller's timeout.
        # Every queue is a quorum queue: a classic queue lives on one node, and while that node
        # is down its declaration fails on every node, which would stop commands too.
        queries_arguments: FieldTable = {"x-queue-type": "quorum", "x-message-ttl": limits.query_ttl_ms}
        # Holding queues keep the newest: an incident must not fill the broker's disk.
        holding_arguments: FieldTable = {
            "x-queue-type": "quorum",
            "x-max-length": limits.holding_max_length,
            "x-overflow": "drop-head",
        }
        async with translated():
            connection = self._require()
            channel = await connection.channel()
            try:
                dead_letter = await channel.declare_exchange(
                    n.dead_letter, aio_pika.ExchangeType.FANOUT, durable=True
                )
                for exchange, queue, keys, arguments in (
                    (n.commands, n.commands, COMMANDS, commands_arguments),
                    (n.queries, n.queries, QUERIES, queries_arguments),
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
                    channel, q, accepted = await self._declare_queue(channel, queue, arguments)
                    await q.bind(unrouted, routing_key="")
                    if queue == n.commands:
                        self.delivery_limit_in_force = limits.delivery_limit if accepted else None
                        channel = await self._declare_partitions(channel, arguments)
                        continue
                    for key in keys:
                        await q.bind(direct, routing_key=key)
                await channel.declare_exchange(n.events, aio_pika.ExchangeType.FANOUT, durable=True)
                for queue in (n.dead_letter, n.rejected):
                    channel, q, _ = await self._declare_queue(channel, queue, holding_arguments)
                    if queue == n.dead_letter:
                        await q.bind(dead_letter, routing_key="")
            finally:
                await channel.close()

    async def _declare_partitions(self, channel: AbstractChannel, arguments: FieldTable) -> AbstractChannel:
        """Route commands to one queue, or spread them over partitions by instance_token.

        With several partitions the command exchange feeds a consistent-hash
        exchange keyed by the `instance_token` header; commands without the
        header all go to one partition. Bindings of the other layout are
        removed, so changing the count never delivers a command twice.
        """
        n = self.names
        for index in range(1, n.partitions):
            channel, _, _ = await self._declare_queue(channel, n.partition(index), arguments)
        # Bind on a channel of our own: a declaration refused above closed the one it ran on,
        # and with it every exchange and queue object made there.
        await channel.close()
        channel = await self._require().channel()
        direct = await channel.get_exchange(n.commands, ensure=False)
        first = await channel.get_queue(n.commands, ensure=False)
        existing = await self._exchange_exists(n.partitioner)
        if n.partitions == 1:
            for key in COMMANDS:
                await first.bind(direct, routing_key=key)
            if existing:
                partitioner = await channel.get_exchange(n.partitioner, ensure=False)
                for key in COMMANDS:
                    await partitioner.unbind(direct, routing_key=key)
            return channel
        headerless = await channel.declare_exchange(n.headerless, aio_pika.ExchangeType.FANOUT, durable=True)
        try:
            partitioner = await channel.declare_exchange(
                n.partitioner,
                self.partitioner_type,
                durable=True,
                arguments={"hash-header": INSTANCE_TOKEN_HEADER, "alternate-exchange": headerless.name},
            )
        except aiormq.exceptions.ConnectionCommandInvalid as e:
            raise PartitionerMissing(
                f"STATUSEK_COMMAND_PARTITIONS={n.partitions} needs RabbitMQ's consistent-hash exchange:"
                " run 'rabbitmq-plugins enable rabbitmq_consistent_hash_exchange' on the broker"
            ) from e
        # RabbitMQ 3.10 hashes a missing header as a constant, so headerless commands share
        # one partition; should a broker route them nowhere instead, they reach partition 0.
        await first.bind(headerless, routing_key="")
        for index in range(n.partitions):
            queue = await channel.get_queue(n.partition(index), ensure=False)
            # The routing key of a consistent-hash binding is its weight.
            await queue.bind(partitioner, routing_key="1")
        for key in COMMANDS:
            await partitioner.bind(direct, routing_key=key)
            await first.unbind(direct, routing_key=key)
        return await self._unbind_retired_partitions(channel, partitioner)

    async def _exchange_exists(self, name: str) -> bool:
        channel = await self._require().channel()
        try:
            await channel.declare_exchange(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _unbind_retired_partitions(
        self, channel: AbstractChannel, partitioner: AbstractExchange
    ) -> AbstractChannel:
        """Partitions beyond the count (it was lowered) take no new commands; say if they still hold some."""
        index = self.names.partitions
        while True:
            name = self.names.partition(index)
            probe = await self._require().channel()
            try:
                queue = await probe.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return channel
            finally:
                with contextlib.suppress(Exception):
                    await probe.close()
            await (await channel.get_queue(name, ensure=False)).unbind(partitioner, routing_key="1")
            left = int(queue.declaration_result.message_count or 0)
            if left:
                log.warning(
                    "a retired command partition still holds commands",
                    queue=name,
                    messages=left,
                    fix="raise STATUSEK_COMMAND_PARTITIONS again until it is empty, or move its messages",
                )
            index += 1

    async def _declare_queue(
        self, channel: AbstractChannel, name: str, arguments: FieldTable
    ) -> tuple[AbstractChannel, AbstractQueue, bool]:
        """Declare with our limits; a queue declared earlier with other arguments is kept as it is.

        RabbitMQ refuses to change a queue's arguments (and closes the channel),
        so a deployment from before the limits keeps running and is told how
        to get them: a policy, or deleting the queue while no worker runs.
        """
        try:
            return channel, await channel.declare_queue(name, durable=True, arguments=arguments), True
        except aiormq.exceptions.ChannelPreconditionFailed as e:
            log.warning(
                "queue exists with other arguments; its limits are not ours",
                queue=name,
                wanted=arguments,
                error=str(e),
                fix="apply the policies of deploy/rabbitmq/definitions.json, or delete the queue and restart",
            )
            channel = await self._require().channel()
            return channel, await channel.declare_queue(name, passive=True), False

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages per statusek queue, from passive declarations."""
        n = self.names
        depths: dict[str, int] = {}
        async with translated():
            channel = await self._require().channel()
            try:
                for name in (*n.command_queues, n.queries, n.dead_letter, n.rejected):
                    q = await channel.declare_queue(name, passive=True)
                    depths[name] = int(q.declaration_result.message_count or 0)
            finally:
                await channel.close()
        return depths

    def _require(self) -> AbstractConnection:
        if self.connection is None or not self.is_open:
            raise BrokerUnavailable("rabbitmq unavailable: not connected")
        return self.connection

    async def output(self) -> AbstractChannel:
        if self._out is None or self._out.is_closed:
            async with translated():
                self._out = await self._require().channel(publisher_confirms=True)
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
        """Raises `TooLargeForBroker` for a reply over the broker's max_message_size."""
        body = reply.model_dump_json().encode()
        # What aio_pika.Message would make, without its checks of every attribute set.
        properties = Properties(
            content_type="application/json",
            correlation_id=correlation_id,
            message_type="reply",
            headers={},
            delivery_mode=TRANSIENT,
            priority=0,
        )
        try:
            # Not mandatory: RabbitMQ (3.10 here) returns a mandatory message to a direct reply-to
            # address as NO_ROUTE while it delivers it, so every reply came back whole to be decoded
            # and ignored; a reply whose queue is gone is lost either way (its sender is gone too).
            await self._publish_default(reply_to, body, properties, mandatory=False)
        except BrokerUnavailable as e:
            if isinstance(e.__cause__, aiormq.exceptions.ChannelPreconditionFailed) and "max size" in str(
                e.__cause__
            ):
                raise TooLargeForBroker(
                    len(body), f"the broker refused a reply of {len(body)} bytes: {e}"
                ) from e
            raise

    async def park(self, queue: str, original: AbstractIncomingMessage, headers: Mapping[str, Any]) -> None:
        """Copy a delivery to a holding queue with the reason in its headers.

        The copy is timestamped and carries the body's original size; a body
        over `dead_letter_body_bytes` is cut (a 1 MB refusal is not worth 1 MB).
        """
        body = original.body
        cut = len(body) > self.limits.dead_letter_body_bytes
        marks: dict[str, Any] = {ORIGINAL_SIZE_HEADER: len(body)}
        if cut:
            marks[TRUNCATED_HEADER] = True
            body = body[: self.limits.dead_letter_body_bytes]
        copy = aio_pika.Message(
            body,
            # The caller's headers last: it may know the size of a body cut on arrival.
            headers={**(original.headers or {}), **marks, **headers},
            timestamp=datetime.now(UTC),
            content_type=original.content_type,
            correlation_id=original.correlation_id,
            message_id=original.message_id,
            reply_to=original.reply_to,
            # A replay ("Move messages", a shovel) arrives with another routing key;
            # the type still names the command.
            type=original.type or original.routing_key,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        # Mandatory: a copy the broker would drop must not let the delivery be acked.
        try:
            await self._publish_default(queue, copy.body, copy.properties, mandatory=True)
        except Unroutable:
            # The holding queue is gone (deleted by hand). Declare the topology again, park once more.
            log.warning("holding queue missing, declaring it again", queue=queue)
            await self.declare()
            await self._publish_default(queue, copy.body, copy.properties, mandatory=True)
            self.on_holding_queue_redeclared(queue)

    async def publish_notifications(self, notifications: Sequence[Notification]) -> None:
        """Publish and wait for every confirm; raises `Unconfirmed` naming what was not confirmed.

        See `publish_waves`; this has no timeout of its own (a lost link fails it).
        """
        await self.publish_waves(notifications)

    async def publish_waves(
        self,
        notifications: Sequence[Notification],
        *,
        timeout: float | None = None,
        may_continue: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Publish and wait for every confirm; raises `Unconfirmed` naming what was not confirmed.

        Sent in waves: the first notification of every instance, then the second, ... each
        wave only after the previous one's confirms. A notification a queue refused (nack,
        e.g. a full queue with reject-publish) thus never has a later one of its instance
        accepted before it by that queue, and holds them back (`Unconfirmed.unconfirmed`):
        the caller re-sends from the refused one on. Confirms of one wave wait at most `timeout`;
        `may_continue` is asked before every wave (a relay's fence, see `app.relay`).
        """
        confirmed: list[Notification] = []
        nacked: list[Notification] = []
        blocked: set[str | None] = set()

        def unconfirmed() -> list[Notification]:
            done = {n.message_id for n in confirmed}
            return [n for n in notifications if n.message_id not in done]

        for wave in notification_waves(notifications):
            wave = [n for n in wave if n.instance_token not in blocked]
            if not wave:
                continue
            try:
                channel = await self.output()
                # Asked last, right before the frames go: the answer is only good for a while.
                if may_continue is not None and not await may_continue():
                    raise BrokerUnavailable("publishing stopped: this relay no longer holds the partition")
                async with translated(), asyncio.timeout(timeout):
                    results = await asyncio.gather(
                        *(_publish_event(channel, self.names.events, n) for n in wave),
                        return_exceptions=True,
                    )
            except BrokerUnavailable as e:
                timed_out = isinstance(e.__cause__, TimeoutError)
                raise Unconfirmed(str(e), confirmed, nacked, unconfirmed(), timed_out=timed_out) from e
            failure: BaseException | None = None
            for n, result in zip(wave, results, strict=True):
                if result is None:
                    confirmed.append(n)
                elif isinstance(result, aiormq.exceptions.DeliveryError):
                    # Basic.Nack: a queue refused it; the others got it.
                    nacked.append(n)
                    blocked.add(n.instance_token)
                else:
                    failure = failure or result
            if failure is not None:
                message = mask_secrets(f"rabbitmq unavailable: {describe(failure)}")
                raise Unconfirmed(message, confirmed, nacked, unconfirmed()) from failure
        if nacked:
            message = f"the broker refused {len(nacked)} notification(s)"
            raise Unconfirmed(message, confirmed, nacked, unconfirmed(), answered=True)

    async def _publish_default(
        self,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        *,
        mandatory: bool,
    ) -> None:
        channel = await self.output()
        async with translated():
            await _publish(channel, "", routing_key, body, properties, mandatory=mandatory)


class Unconfirmed(BrokerUnavailable):
    """Some notifications of a `publish_notifications` call were not confirmed.

    `confirmed` are on every bound queue (and may be forgotten); `nacked` were refused by a
    queue (the others got them); `unconfirmed` (in the order given) holds the nacked ones,
    those held back behind them, and any whose fate is unknown (the link failed, a wave
    timed out): all of them to be sent again, in that order.
    """

    def __init__(
        self,
        message: str,
        confirmed: Sequence[Notification],
        nacked: Sequence[Notification],
        unconfirmed: Sequence[Notification],
        *,
        answered: bool = False,
        timed_out: bool = False,
    ):
        super().__init__(message)
        # The broker answered every one sent (confirm or nack): the link is fine.
        self.answered = answered
        # A wave's confirms did not come in time: its frames may still reach the broker later.
        self.timed_out = timed_out
        self.confirmed = list(confirmed)
        self.nacked = list(nacked)
        self.unconfirmed = list(unconfirmed)


def notification_waves(notifications: Sequence[Notification]) -> list[list[Notification]]:
    """Wave k holds the k-th notification of each instance, in the order given."""
    waves: list[list[Notification]] = []
    seen: dict[str | None, int] = {}
    for n in notifications:
        k = seen.get(n.instance_token, 0)
        seen[n.instance_token] = k + 1
        if k == len(waves):
            waves.append([])
        waves[k].append(n)
    return waves


async def _publish(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: aiormq.spec.Basic.Properties,
    *,
    mandatory: bool,
) -> None:
    """Publish as aio-pika's `Exchange.publish` does (confirmed), without waiting for the write.

    aio-pika holds the channel until the writer task has written each message's frames, one
    socket write per message. Not waiting, the messages a window publishes together (replies,
    notifications) are all queued at once, and the connection's `CorkedWriter` sends them in
    one write. A `mandatory` message the broker returns raises `Unroutable`.
    """
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    confirmed = await underlay.basic_publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        mandatory=mandatory,
        wait=False,
    )
    # aio-pika opens channels with on_return_raises=False: a returned message comes back as the
    # confirm's result, not as an error.
    if isinstance(confirmed, aiormq.abc.DeliveredMessage):
        raise Unroutable(f"rabbitmq returned a message to {exchange!r} with key {routing_key!r}: no queue")


async def _publish_event(channel: AbstractChannel, exchange: str, n: Notification) -> None:
    properties = Properties(
        content_type="application/json",
        message_type=n.type,
        message_id=n.message_id,
        headers=dict(n.headers),
        delivery_mode=PERSISTENT,
        priority=0,
    )
    # Not mandatory: a fanout with no queue bound drops it, as it would any message; returned, it
    # would cost the broker a copy back and the worker a decoded message per notification.
    await _publish(channel, exchange, "", json.dumps(n.body).encode(), properties, mandatory=False)
