"""Whether a RabbitMQ user may publish messages whose user_id names someone else.

RabbitMQ checks that a message's `user_id` is the publishing connection's
user, unless that user has the `impersonator` tag. A publish that fails the
check closes its channel (406 PRECONDITION_FAILED): finding that out at start
is far better than on every request of a gateway that publishes as its callers.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq

from statusek.adapters.rabbitmq.broker import describe
from statusek.adapters.rabbitmq.endpoints import connect_first, split_urls

# No queue has this name: the probe is dropped unrouted once the broker has checked its user_id.
PROBE_ROUTING_KEY = "statusek.impersonation-check"
PROBE_USER_ID = "statusek-impersonation-check"


async def impersonation_problem(url: str, *, timeout: float = 10.0) -> str | None:
    """None when the user of `url` may publish as another user; else what is wrong, for a person."""
    user = unquote(urlsplit(split_urls(url)[0]).username or "guest")
    try:
        connection, used = await connect_first(
            split_urls(url), timeout=timeout, client_properties={"connection_name": "statusek gateway check"}
        )
    except Exception as e:
        return f"cannot check the impersonator tag of {user!r}: {describe(e, url)}"
    try:
        channel = await connection.channel(publisher_confirms=True)
        probe = aio_pika.Message(b"", user_id=PROBE_USER_ID)
        await asyncio.wait_for(
            channel.default_exchange.publish(probe, routing_key=PROBE_ROUTING_KEY), timeout
        )
    except aiormq.exceptions.ChannelPreconditionFailed:
        return (
            f"RabbitMQ user {user!r} may not publish as the gateway's callers: give it the impersonator tag"
            f" (rabbitmqctl set_user_tags {user} impersonator), or run STATUSEK_GATEWAY_AUTH=none"
        )
    except Exception as e:
        return f"cannot check the impersonator tag of {user!r}: {describe(e, used)}"
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return None
