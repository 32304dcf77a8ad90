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

from statusek.client._client import Client
from statusek.client._commands import Created
from statusek.client._heartbeat import Heartbeat
from statusek.client._rpc import expiration_for
from statusek.client._urls import check_url, check_urls
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
    "check_url",
    "check_urls",
    "expiration_for",
    "rejection",
]
