"""statusek.Client against the running worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from statusek import (
    BrokerUnreachable,
    Client,
    InstanceFinishedError,
    InstanceNotFound,
    InvalidURL,
    NoAnswerError,
    StatusNotReady,
    TokenConflict,
    TopologyNotFound,
)
from statusek.adapters.rabbitmq.corked import CorkedConnection
from statusek.testing import Services, fresh_vhost
from statusek.worker.worker import Worker
from tests.helpers import TASK
from tests.integration.conftest import Cluster
from tests.log_secrets import password as registered_password


@pytest.fixture
async def client(worker: Worker, amqp_url: str) -> AsyncIterator[Client]:
    async with await Client.connect(amqp_url) as client:
        yield client


async def test_full_lifecycle(client: Client) -> None:
    """create, set, ping, queries and events through the client."""
    token = await client.create(TASK, labels={"job": "7"}, instance_timeout=60)
    await client.set_status(token, "STARTED", "working")
    assert await client.ping(token, "page 1 of 2", code=1)
    assert await client.is_set(token, "STARTED") is True
    assert await client.is_ready(token, "FINISHED") == (
        True,
        f"Status 'FINISHED' can be set on instance {token}",
    )
    assert await client.is_finished(token) == (False, None)
    instance = await client.get_instance(token)
    assert instance["labels"] == {"job": "7"} and instance["statuses"] == ["STARTED"]
    await client.set_status(token, "FINISHED")
    assert await client.is_finished(token) == (True, "ALL_MANDATORY_STATUSES_ARE_SET")
    kinds = [e["kind"] for e in await client.get_events(token)]
    assert kinds == ["created", "status", "ping", "status", "finished"]


async def test_requests_made_together_leave_in_one_socket_write(client: Client) -> None:
    """Five creates started in one turn of the loop reach the broker in one write, and each is answered."""
    link = client._link
    assert link is not None and isinstance(link.connection, CorkedConnection)
    writer = link.connection.transport_factory.writer
    assert writer is not None
    before = writer.writes
    tokens = await asyncio.gather(*(client.create(TASK) for _ in range(5)))
    assert len(set(tokens)) == 5
    assert writer.writes - before == 1  # the client writes nothing else while it waits for answers


async def test_wait_finished_returns_within_200_ms_of_the_finishing_status(client: Client) -> None:
    """wait_finished is woken by the notification, not by polling."""
    token = await client.create(TASK)
    await client.set_status(token, "STARTED")
    waiter = asyncio.create_task(client.wait_finished(token, timeout=10))
    await asyncio.sleep(0.3)  # the waiter has subscribed and asked once
    assert not waiter.done()
    started = time.perf_counter()
    await client.set_status(token, "FINISHED")
    reason = await waiter
    elapsed = time.perf_counter() - started
    assert reason == "ALL_MANDATORY_STATUSES_ARE_SET"
    assert elapsed < 0.2, f"{elapsed * 1000:.0f} ms"


async def test_wait_finished_on_an_already_finished_instance(client: Client) -> None:
    """An instance finished before the wait answers at once."""
    token = await client.create(TASK)
    await client.cancel(token, "not needed")
    assert await client.wait_finished(token, timeout=5) == "CANCELLED"


async def test_rejections_raise_one_exception_type_per_family(client: Client) -> None:
    """Codes map to exception types that carry code and message."""
    token = str(uuid.uuid4())
    with pytest.raises(InstanceNotFound) as not_found:
        await client.set_status(token, "STARTED")
    assert not_found.value.code == "INSTANCE_TOKEN_IS_NOT_FOUND" and token in not_found.value.message
    await client.create(TASK, instance_token=token)
    with pytest.raises(StatusNotReady) as not_ready:
        await client.set_status(token, "FINISHED")
    assert not_ready.value.code == "NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET"
    with pytest.raises(TokenConflict):
        await client.create(TASK, instance_token=token, labels={"other": "args"})
    await client.cancel(token)
    with pytest.raises(InstanceFinishedError):
        await client.ping(token)


async def test_notifications_iterator_filters_by_instance_and_type(client: Client) -> None:
    """The iterator yields only what matches every filter."""
    token = await client.create(TASK)
    other = await client.create(TASK)
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for kind, body in client.notifications(instance_token=token, types={"status-changed"}):
            seen.append((kind, body["status_name"]))
            if len(seen) == 2:
                return

    collector = asyncio.create_task(collect())
    await asyncio.sleep(0.2)
    await client.set_status(other, "STARTED")
    await client.set_status(token, "STARTED")
    await client.set_status(token, "FINISHED")
    await asyncio.wait_for(collector, 5)
    assert seen == [("status-changed", "STARTED"), ("status-changed", "FINISHED")]


async def test_heartbeat_keeps_the_instance_alive(client: Client) -> None:
    """Pinging every 0.3 s keeps a 1 s heartbeat open for 2.5 s of work."""
    token = await client.create(TASK, heartbeat_timeout=1, instance_timeout=60)
    async with client.heartbeat(token, every=0.3) as beat:
        for page in range(5):
            beat.progress(f"page {page + 1} of 5")
            await asyncio.sleep(0.5)
    assert beat.pings >= 7
    assert await client.is_finished(token) == (False, None)
    messages = [e["message"] for e in await client.get_events(token) if e["kind"] == "ping"]
    assert "page 5 of 5" in messages


async def test_heartbeat_cancels_the_block_when_the_instance_is_cancelled(
    client: Client, amqp_url: str
) -> None:
    """A cancel from elsewhere stops the work at the next ping with InstanceFinishedError."""
    token = await client.create(TASK, heartbeat_timeout=5, instance_timeout=60)
    reached_the_end = False

    async def cancel_from_elsewhere() -> None:
        await asyncio.sleep(0.5)
        async with await Client.connect(amqp_url) as operator:
            await operator.cancel(token, "operator stopped it")

    canceller = asyncio.create_task(cancel_from_elsewhere())
    started = time.perf_counter()
    with pytest.raises(InstanceFinishedError):
        async with client.heartbeat(token, every=0.2):
            await asyncio.sleep(30)
            reached_the_end = True
    await canceller
    assert not reached_the_end
    assert time.perf_counter() - started < 2


async def test_create_instance_tells_a_repeat_from_a_creation(client: Client) -> None:
    """create_instance says whether the token was new or existed with the same arguments."""
    token = str(uuid.uuid4())
    assert await client.create_instance(TASK, instance_token=token) == (token, True)
    assert await client.create_instance(TASK, instance_token=token) == (token, False)


async def test_a_request_nobody_takes_expires_in_its_queue(cluster: Cluster) -> None:
    """With no worker, a create raises NoAnswerError at its bound and the broker drops it as expired."""
    async with await Client.connect(cluster.env["STATUSEK_AMQP_URL"]) as client:
        started = time.perf_counter()
        with pytest.raises(NoAnswerError) as caught:
            await client.create(TASK, timeout=1)
        assert 1 <= time.perf_counter() - started < 2
        assert caught.value.routing_key == "create"
    channel = await cluster.wire.connection.channel()
    dead = await channel.declare_queue("statusek.dead-letter", passive=True)
    deadline = time.perf_counter() + 5
    while (copy := await dead.get(no_ack=True, fail=False)) is None:
        assert time.perf_counter() < deadline, "not expired"
        await asyncio.sleep(0.1)
    assert (copy.headers or {})["x-first-death-reason"] == "expired"
    assert json.loads(copy.body)["object_name"] == TASK


async def test_a_vhost_without_statusek_is_refused_at_connect(services: Services) -> None:
    """Connecting to a vhost with no statusek exchanges raises TopologyNotFound naming the vhost."""
    with (
        fresh_vhost(services.amqp_url, admin=services.rabbit) as url,
        pytest.raises(TopologyNotFound) as caught,
    ):
        await Client.connect(url, timeout=5)
    assert caught.value.vhost == urlsplit(url).path[1:]
    assert caught.value.exchange == "statusek.commands"


async def test_a_url_that_is_not_amqp_fails_at_once() -> None:
    """`localhost` is refused before any attempt to connect."""
    with pytest.raises(InvalidURL):
        await Client.connect("localhost")


async def test_a_user_without_permission_is_told_so(cluster: Cluster, services: Services) -> None:
    """A user that may read notifications but not publish commands gets one clear error, at once."""
    user, password = f"statusek-reader-{uuid.uuid4().hex[:8]}", registered_password("reader-secret")
    services.rabbit.rabbitmqctl("add_user", user, password)
    try:
        services.rabbit.set_permissions(cluster.vhost, user, "^amq\\.gen-.*$", "^amq\\.gen-.*$", ".*")
        parts = urlsplit(cluster.env["STATUSEK_AMQP_URL"])
        url = parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port or 5672}").geturl()
        async with await Client.connect(url) as client:
            started = time.perf_counter()
            with pytest.raises(BrokerUnreachable) as caught:
                await client.create(TASK, timeout=5)
            assert time.perf_counter() - started < 1
    finally:
        services.rabbit.rabbitmqctl("delete_user", user)
    assert str(caught.value) == (
        f"user {user!r} may not publish to 'statusek.commands' on vhost {cluster.vhost!r}: "
        "ask for the permission, or use another user"
    )
