"""Whether a RabbitMQ user may publish messages whose user_id names someone else.

RabbitMQ checks that a message's `user_id` is the publishing connection's
user, unless that user has the `impersonator` tag. A publish that fails the
check closes its channel (406 PRECONDITION_FAILED): finding that out at start
is far better than on every request of a gateway that publishes as its callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from statusek.adapters.rabbitmq.endpoints import connect_first, split_urls
from statusek.adapters.rabbitmq.errors import describe

# No queue has this name: a probe published there is dropped unrouted once its user_id is checked.
PROBE_ROUTING_KEY = "statusek.impersonation-check"
PROBE_USER_ID = "statusek-impersonation-check"
# Where a user that may not publish to the default exchange (statusek-client's permissions) probes:
# an exchange of its own, bound to nothing, deleted afterwards.
PROBE_EXCHANGE_PREFIX = "statusek.client.impersonation-check."


async def impersonation_problem(url: str, *, timeout: float = 10.0) -> str | None:
    """None when the user of `url` may publish as another user; else what is wrong, for a person.

    RabbitMQ checks write permission and the exchange before the user_id, so
    the probe goes where the user may publish: the default exchange, else an
    exchange it declares for the purpose (`statusek.client.*`, which
    statusek-client's permissions allow).
    """
    user = unquote(urlsplit(split_urls(url)[0]).username or "guest")
    try:
        connection, used = await connect_first(
            split_urls(url), timeout=timeout, client_properties={"connection_name": "statusek gateway check"}
        )
    except Exception as e:
        return f"cannot check the impersonator tag of {user!r}: {describe(e, url)}"
    refusals: list[str] = []
    try:
        for probe in (_probe_default_exchange, _probe_own_exchange):
            try:
                async with asyncio.timeout(timeout):
                    await probe(connection)
                return None
            except aiormq.exceptions.ChannelPreconditionFailed:
                return (
                    f"RabbitMQ user {user!r} may not publish as the gateway's callers: give it the"
                    f" impersonator tag (rabbitmqctl set_user_tags {user} impersonator, with its other"
                    " tags), or run STATUSEK_GATEWAY_AUTH=none"
                )
            except aiormq.exceptions.ChannelAccessRefused as e:
                refusals.append(str(e))
        return (
            f"cannot check the impersonator tag of {user!r}: it may neither publish to the default"
            f" exchange nor declare {PROBE_EXCHANGE_PREFIX}* ({'; '.join(refusals)})"
        )
    except Exception as e:
        return f"cannot check the impersonator tag of {user!r}: {describe(e, used)}"
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


def _probe() -> aio_pika.Message:
    return aio_pika.Message(b"", user_id=PROBE_USER_ID)


async def _probe_default_exchange(connection: AbstractConnection) -> None:
    channel = await connection.channel(publisher_confirms=True)
    try:
        await channel.default_exchange.publish(_probe(), routing_key=PROBE_ROUTING_KEY)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _probe_own_exchange(connection: AbstractConnection) -> None:
    channel = await connection.channel(publisher_confirms=True)
    name = PROBE_EXCHANGE_PREFIX + secrets.token_hex(4)
    try:
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=False)
        try:
            await exchange.publish(_probe(), routing_key=PROBE_ROUTING_KEY)
        finally:
            # The publish may have closed this channel: delete on a channel of its own.
            cleanup = await connection.channel()
            with contextlib.suppress(Exception):
                await cleanup.exchange_delete(name)
            with contextlib.suppress(Exception):
                await cleanup.close()
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
