"""The one place where a delivery's fate is decided: ack, dead-letter, park or requeue."""

from __future__ import annotations

import re
from collections.abc import Sequence

import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from statusek.adapters.rabbitmq.broker import ORIGINAL_SIZE_HEADER, TRUNCATED_HEADER, Broker
from statusek.adapters.rabbitmq.errors import translated
from statusek.core.codes import Code
from statusek.core.errors import InvalidMessage
from statusek.core.messages import Reply

log = structlog.get_logger(__name__)

REASON_HEADER = "x-statusek-reason"
DETAIL_HEADER = "x-statusek-detail"
CODE_HEADER = "x-statusek-code"
MESSAGE_HEADER = "x-statusek-message"

# RabbitMQ names these itself: a sender cannot declare a queue under `amq.`, so a reply_to of
# this form is a reply queue of the sender's own (direct reply-to, or a queue declared "").
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
SERVER_NAMED = "amq.gen-"


def reply_queue_allowed(queue: str, pattern: str | None) -> bool:
    """Whether statusek may publish a reply to `queue`.

    reply_to is the sender's word, and any service may write it: a name of another service's
    durable queue would have statusek put its replies there. Only queues a requester makes for
    itself qualify, and named queues the operator admits with STATUSEK_REPLY_QUEUE_PATTERN.
    """
    if queue == DIRECT_REPLY_TO or queue.startswith(DIRECT_REPLY_TO + ".") or queue.startswith(SERVER_NAMED):
        return True
    return pattern is not None and re.fullmatch(pattern, queue) is not None


async def reply_to_sender(broker: Broker, delivery: AbstractIncomingMessage, reply: Reply) -> None:
    """Publish a reply to the delivery's reply_to, or drop it (counted, logged) if no reply queue."""
    queue = delivery.reply_to or ""
    if reply_queue_allowed(queue, broker.limits.reply_queue_pattern):
        await broker.reply(queue, delivery.correlation_id, reply)
        return
    broker.on_reply_refused(queue)
    log.warning(
        "reply dropped: reply_to names no reply queue of the sender's (see STATUSEK_REPLY_QUEUE_PATTERN)",
        reply_to=queue[:255],
        routing_key=delivery.routing_key,
        message_id=(delivery.message_id or "")[:255],
        correlation_id=(delivery.correlation_id or "")[:255],
        code=reply.code,
    )


async def answer(broker: Broker, delivery: AbstractIncomingMessage, reply: Reply) -> None:
    """Reply to the sender, or park a rule rejection nobody would otherwise see."""
    if delivery.reply_to:
        await reply_to_sender(broker, delivery, reply)
    elif not reply.status:
        await broker.park(
            broker.names.rejected,
            delivery,
            {
                CODE_HEADER: reply.code,
                MESSAGE_HEADER: reply.message,
                "x-routing-key": delivery.routing_key or "",
            },
        )


def cut_oversized(delivery: AbstractIncomingMessage, max_body_bytes: int, keep: int) -> int | None:
    """Cut a body over the limit to the `keep` bytes its dead-letter copy holds; returns its size.

    Prefetch bounds the deliveries a worker holds by count, not by bytes: 40 bodies of 5 MB waiting
    for their window took the worker from 52 to 254 MB. Called the moment a delivery arrives; the
    caller dead-letters it as `too-large` with that size (`dead_letter(cut_from=...)`).
    """
    size = len(delivery.body)
    if size <= max_body_bytes:
        return None
    # The abstract type declares no `body` slot; aio-pika's IncomingMessage has one, and this last
    # reference to the bytes is what keeps them alive.
    delivery.body = delivery.body[:keep]  # type: ignore[misc]
    return size


_INTERNAL = {
    "store-failure": "the database refused this command; it is kept in statusek.dead-letter",
    "internal-error": "statusek failed on this command; it is kept in statusek.dead-letter",
}


async def dead_letter(
    broker: Broker, delivery: AbstractIncomingMessage, error: InvalidMessage, *, cut_from: int | None = None
) -> None:
    """Invalid input is never retried: keep a copy with the reason, tell the sender.

    `cut_from`: the size of a body the caller already cut on arrival (see `cut_oversized`).
    """
    size = {} if cut_from is None else {ORIGINAL_SIZE_HEADER: cut_from, TRUNCATED_HEADER: True}
    await broker.park(
        broker.names.dead_letter,
        delivery,
        {
            REASON_HEADER: error.reason,
            DETAIL_HEADER: error.detail[:1024],
            "x-routing-key": delivery.routing_key or "",
            "x-exchange": delivery.exchange or "",
            **size,
        },
    )
    if delivery.reply_to:
        # The sender learns what to fix; our own failures stay in the logs and the copy's headers.
        detail = _INTERNAL.get(error.reason, error.detail)
        await reply_to_sender(broker, delivery, Reply.fail(Code.INVALID_MESSAGE, detail, reason=error.reason))


async def ack(delivery: AbstractIncomingMessage) -> None:
    """Ack one delivery (a query's); a link gone meanwhile is `BrokerUnavailable`."""
    async with translated():
        await delivery.ack()


async def ack_all(deliveries: Sequence[AbstractIncomingMessage]) -> int:
    """Ack a window with one frame per channel; returns how many were stale.

    After a reconnect, deliveries of the old channel cannot be acked (their
    tags mean nothing on the new channel) and the broker has requeued them.
    """
    last_per_channel: dict[int, AbstractIncomingMessage] = {}
    stale = 0
    for d in deliveries:
        channel = _open_channel(d)
        if channel is None:
            stale += 1
        else:
            last_per_channel[id(channel)] = d
    # Translated: a link aiormq drops fails the ack with a CancelledError of its own.
    async with translated():
        for d in last_per_channel.values():
            await d.ack(multiple=True)
    if stale:
        log.warning("stale deliveries not acked; the broker redelivers them", count=stale)
    return stale


async def requeue_all(
    deliveries: Sequence[AbstractIncomingMessage], delivery_limit: int | None = None
) -> int:
    """Give deliveries back (transient trouble or shutdown); never drops them.

    Returns how many were given back for the last time: a quorum queue counts
    deliveries (`x-delivery-count`) and dead-letters a message past
    `delivery_limit` instead of delivering it again.
    """
    last = 0
    async with translated():
        for d in deliveries:
            if _open_channel(d) is not None:
                await d.nack(requeue=True)
                if delivery_limit is not None and delivery_count(d) + 1 > delivery_limit:
                    last += 1
    return last


def delivery_count(delivery: AbstractIncomingMessage) -> int:
    """How many times a quorum queue delivered this message before (0 on the first delivery)."""
    count = (delivery.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


def is_live(delivery: AbstractIncomingMessage) -> bool:
    """Whether the delivery can still be settled on the channel it came on."""
    return _open_channel(delivery) is not None


def _open_channel(delivery: AbstractIncomingMessage) -> object | None:
    try:
        return delivery.channel
    except ChannelInvalidStateError:
        return None
