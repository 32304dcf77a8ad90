"""The one place where a delivery's fate is decided: ack, dead-letter, park or requeue."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from statusek.adapters.rabbitmq.broker import Broker
from statusek.core.codes import Code
from statusek.core.errors import InvalidMessage
from statusek.core.messages import Reply

log = structlog.get_logger(__name__)

REASON_HEADER = "x-statusek-reason"
DETAIL_HEADER = "x-statusek-detail"
CODE_HEADER = "x-statusek-code"
MESSAGE_HEADER = "x-statusek-message"


async def answer(broker: Broker, delivery: AbstractIncomingMessage, reply: Reply) -> None:
    """Reply to the sender, or park a rule rejection nobody would otherwise see."""
    if delivery.reply_to:
        await broker.reply(delivery.reply_to, delivery.correlation_id, reply)
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


_INTERNAL = {
    "store-failure": "the database refused this command; it is kept in statusek.dead-letter",
    "internal-error": "statusek failed on this command; it is kept in statusek.dead-letter",
}


async def dead_letter(broker: Broker, delivery: AbstractIncomingMessage, error: InvalidMessage) -> None:
    """Invalid input is never retried: keep a copy with the reason, tell the sender."""
    await broker.park(
        broker.names.dead_letter,
        delivery,
        {
            REASON_HEADER: error.reason,
            DETAIL_HEADER: error.detail[:1024],
            "x-routing-key": delivery.routing_key or "",
            "x-exchange": delivery.exchange or "",
        },
    )
    if delivery.reply_to:
        # The sender learns what to fix; our own failures stay in the logs and the copy's headers.
        detail = _INTERNAL.get(error.reason, error.detail)
        await broker.reply(
            delivery.reply_to,
            delivery.correlation_id,
            Reply.fail(Code.INVALID_MESSAGE, detail, reason=error.reason),
        )


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
