"""deploy/rabbitmq/definitions.json, loaded by the compose stack: least privilege and limits."""

from __future__ import annotations

import aio_pika
import aiormq
import pytest

from tests.deploy.conftest import Stack
from tests.log_secrets import password

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CLIENT = ("statusek-client", password("client-secret"))
SUBSCRIBER = ("statusek-subscriber", password("subscriber-secret"))
GATEWAY = ("statusek-gateway", password("gateway-secret"))


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.reject(requeue=True)


async def refused(url: str, action: str) -> bool:
    """Whether the broker refuses `action` on a fresh channel for the user of `url`."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        if action == "publish-events":
            exchange = await channel.get_exchange("statusek.events", ensure=False)
            await exchange.publish(aio_pika.Message(b"{}", type="instance-finished"), routing_key="")
        elif action == "consume-commands":
            queue = await channel.get_queue("statusek.commands", ensure=False)
            await queue.consume(_ignore)
        elif action == "publish-commands":
            exchange = await channel.get_exchange("statusek.commands", ensure=False)
            await exchange.publish(aio_pika.Message(b'{"object_name": "X"}'), routing_key="create")
        elif action == "publish-commands-as-another-user":
            exchange = await channel.get_exchange("statusek.commands", ensure=False)
            message = aio_pika.Message(b'{"object_name": "X"}', user_id="someone-else")
            await exchange.publish(message, routing_key="create")
        elif action == "bind-own-queue":
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind("statusek.events")
        await channel.close()
        return False
    except (aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelPreconditionFailed):
        # PRECONDITION_FAILED: a user_id that is not the connection's user, without the impersonator tag.
        return True
    finally:
        await connection.close()


async def test_a_client_cannot_publish_notifications(stack: Stack) -> None:
    """statusek-client may not publish to statusek.events: only the worker announces."""
    assert await refused(stack.amqp_url(*CLIENT), "publish-events")


async def test_a_client_cannot_consume_commands(stack: Stack) -> None:
    """statusek-client may not take commands off statusek.commands."""
    assert await refused(stack.amqp_url(*CLIENT), "consume-commands")


async def test_a_client_may_publish_commands_and_bind_its_own_queue(stack: Stack) -> None:
    """statusek-client publishes commands and binds a queue of its own to statusek.events."""
    assert not await refused(stack.amqp_url(*CLIENT), "publish-commands")
    assert not await refused(stack.amqp_url(*CLIENT), "bind-own-queue")


async def test_a_subscriber_may_only_listen(stack: Stack) -> None:
    """statusek-subscriber binds its own queue to statusek.events and may not publish commands."""
    assert not await refused(stack.amqp_url(*SUBSCRIBER), "bind-own-queue")
    assert await refused(stack.amqp_url(*SUBSCRIBER), "publish-commands")


async def test_the_gateway_may_publish_commands_as_its_callers(stack: Stack) -> None:
    """statusek-gateway (tag impersonator) publishes a command whose user_id names another user."""
    assert not await refused(stack.amqp_url(*GATEWAY), "publish-commands-as-another-user")


async def test_a_client_may_not_publish_as_another_user(stack: Stack) -> None:
    """statusek-client, without the impersonator tag, may not publish a command as someone else."""
    assert await refused(stack.amqp_url(*CLIENT), "publish-commands-as-another-user")


async def test_the_gateway_may_not_publish_notifications_or_take_commands(stack: Stack) -> None:
    """statusek-gateway may neither publish to statusek.events nor consume statusek.commands."""
    assert await refused(stack.amqp_url(*GATEWAY), "publish-events")
    assert await refused(stack.amqp_url(*GATEWAY), "consume-commands")


def test_the_queue_limit_policies_apply(stack: Stack) -> None:
    """The broker applies the delivery-limit, holding and TTL policies to the worker's queues."""
    policies = {
        name: stack.management(f"queues/statusek/{name}").get("effective_policy_definition", {})
        for name in ("statusek.commands", "statusek.dead-letter", "statusek.rejected", "statusek.queries")
    }
    assert policies["statusek.commands"]["delivery-limit"] == 20
    assert policies["statusek.commands"]["dead-letter-exchange"] == "statusek.dead-letter"
    for holding in ("statusek.dead-letter", "statusek.rejected"):
        assert policies[holding]["max-length"] == 100_000
        assert policies[holding]["overflow"] == "drop-head"
    assert policies["statusek.queries"]["message-ttl"] == 60_000
