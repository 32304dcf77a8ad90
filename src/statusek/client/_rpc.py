"""Requests and their replies: correlation, deadlines, and publishing again after a lost link."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aio_pika
import aiormq
from pamqp.common import FieldTable

from statusek.adapters.rabbitmq.errors import dropped_link_as_error
from statusek.adapters.rabbitmq.properties import Properties
from statusek.client._connection import _Connection
from statusek.client._link import _LINK_ERRORS, _LOST, REPLY_TO
from statusek.core.messages import DEADLINE_HEADER
from statusek.core.partitions import routing_headers
from statusek.exceptions import NoAnswerError, TopologyNotFound, rejection

PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


def expiration_for(seconds: float) -> float:
    """How long a request may wait in its queue when its caller waits `seconds` for the answer.

    A little less than `seconds` (a fifth, at most one second less), so that a
    worker that takes the request just before it expires still has time to
    answer before the caller gives up.
    """
    return max(0.001, seconds - min(1.0, seconds / 5))


def _data(reply: dict[str, Any]) -> dict[str, Any]:
    """The data of a successful reply; a refusal raises its exception."""
    if not reply.get("status"):
        raise rejection(str(reply.get("code")), str(reply.get("message")), reply.get("data"))
    return dict(reply.get("data") or {})


class _Rpc(_Connection):
    """Publishing a request and waiting for its reply, within its deadline."""

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
                properties = Properties(
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
                            async with dropped_link_as_error():
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
