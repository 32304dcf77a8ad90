"""statusek.Client through a broker cut: it resumes, or fails with a clear error, and never hangs.

The client reaches the broker through a TCP proxy that the test cuts
(`block`: every link aborted, new ones refused) and restores (`unblock`).
The worker and the "operator" client connect directly, so they see no cut.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from statusek import BrokerUnreachable, Client, InstanceFinishedError, NotificationsInterrupted
from statusek.adapters.rabbitmq.endpoints import with_heartbeat
from statusek.worker.worker import Worker
from tests.helpers import TASK, eventually
from tests.integration.conftest import Cluster
from tests.integration.faults import TcpProxy, proxied


@pytest.fixture
async def proxy(worker: Worker, amqp_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy to the session's broker, and the URL through it."""
    proxy, url = await proxied(amqp_url, 5672)
    yield proxy, url
    await proxy.close()


@pytest.fixture
async def client(proxy: tuple[TcpProxy, str]) -> AsyncIterator[Client]:
    """A client whose link goes through the proxy."""
    async with await Client.connect(proxy[1], timeout=5) as client:
        yield client


@pytest.fixture
async def operator(worker: Worker, amqp_url: str) -> AsyncIterator[Client]:
    """A client straight to the broker: acts while the other one is cut off."""
    async with await Client.connect(amqp_url) as operator:
        yield operator


async def test_a_request_made_during_a_cut_is_answered_after_it(
    client: Client, proxy: tuple[TcpProxy, str]
) -> None:
    """A command sent while the broker is away waits for the link and is answered once it is back."""
    token = await client.create(TASK)
    proxy[0].block()
    call = asyncio.create_task(client.set_status(token, "STARTED", timeout=15))
    await asyncio.sleep(1)
    assert not call.done()
    proxy[0].unblock()
    await asyncio.wait_for(call, 15)
    assert client.reconnects == 1
    assert await client.is_set(token, "STARTED")


async def test_a_request_fails_clearly_when_the_broker_stays_away(
    client: Client, proxy: tuple[TcpProxy, str]
) -> None:
    """With the link down for good, a query raises BrokerUnreachable at its bound."""
    token = await client.create(TASK)
    proxy[0].block()
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as caught:
        await client.get_instance(token, timeout=1.5)
    assert 1.4 < time.monotonic() - started < 3
    assert f"no link to RabbitMQ at 127.0.0.1:{proxy[0].port}" in str(caught.value)
    assert "none came back within 1.5 s" in str(caught.value)


async def test_a_command_whose_answer_was_cut_off_is_applied_once(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """A ping applied while its caller was cut off is published again after the cut, and applied once."""
    cluster.start()
    await cluster.wait_for_consumers(1)
    proxy, url = await proxied(cluster.env["STATUSEK_AMQP_URL"], 5672)
    try:
        async with await Client.connect(url) as client:
            token = await client.create(TASK)
            cluster.stop()  # the ping waits in the queue
            ping = asyncio.create_task(client.ping(token, "once", timeout=60))
            await eventually(lambda: cluster.queue_depths()["statusek.commands"][0] == 1, 10)
            proxy.block()  # the caller is cut off; the worker answers into the void
            cluster.start()
            pings = "SELECT count(*) FROM events WHERE instance_token = $1 AND kind = 'ping'"
            deadline = time.monotonic() + 30
            while await cluster_db.fetchval(pings, uuid.UUID(token)) == 0:
                assert time.monotonic() < deadline, "the ping was never applied"
                await asyncio.sleep(0.1)
            assert not ping.done()
            proxy.unblock()  # published again, same message_id: answered from the record
            assert await asyncio.wait_for(ping, 30)
            assert client.reconnects == 1
            assert await cluster_db.fetchval(pings, uuid.UUID(token)) == 1
    finally:
        await proxy.close()


async def test_wait_finished_sees_a_finish_made_during_a_cut(
    client: Client, operator: Client, proxy: tuple[TcpProxy, str]
) -> None:
    """The notification of a finish made during a cut is lost, and wait_finished asks again after it."""
    token = await operator.create(TASK)
    await operator.set_status(token, "STARTED")
    waiter = asyncio.create_task(client.wait_finished(token, timeout=20))
    await asyncio.sleep(0.5)
    proxy[0].block()
    await eventually(lambda: not client.connected, 5)
    await operator.set_status(token, "FINISHED")
    await asyncio.sleep(0.5)
    proxy[0].unblock()
    assert await asyncio.wait_for(waiter, 20) == "ALL_MANDATORY_STATUSES_ARE_SET"


async def test_wait_finished_fails_clearly_when_the_broker_stays_away(
    client: Client, proxy: tuple[TcpProxy, str]
) -> None:
    """A cut that outlasts the wait raises BrokerUnreachable at the wait's bound, not later."""
    token = await client.create(TASK)
    waiter = asyncio.create_task(client.wait_finished(token, timeout=2))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    proxy[0].block()
    with pytest.raises(BrokerUnreachable) as caught:
        await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - started < 2.5
    assert "for the finish, and none came back within 2 s" in str(caught.value)


async def test_notifications_are_interrupted_by_a_cut_and_resume_when_asked_again(
    client: Client, operator: Client, proxy: tuple[TcpProxy, str]
) -> None:
    """notifications() raises NotificationsInterrupted at a cut; iterating again yields new ones."""
    token = await operator.create(TASK)

    async def first_notification() -> tuple[str, dict[str, object]]:
        async for kind, body in client.notifications(instance_token=token):
            return kind, body
        raise AssertionError("the stream ended")

    cut_off = asyncio.create_task(first_notification())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    proxy[0].block()
    with pytest.raises(NotificationsInterrupted):
        await asyncio.wait_for(cut_off, 5)
    assert time.monotonic() - started < 1
    proxy[0].unblock()
    resumed = asyncio.create_task(first_notification())
    await eventually(lambda: client.connected, 10)
    await asyncio.sleep(0.5)  # the new queue is bound
    await operator.set_status(token, "STARTED")
    kind, body = await asyncio.wait_for(resumed, 5)
    assert (kind, body["status_name"]) == ("status-changed", "STARTED")


async def test_heartbeat_resumes_after_a_short_cut(client: Client, proxy: tuple[TcpProxy, str]) -> None:
    """Pings missed during a 1.5 s cut are made up after it; a 4 s heartbeat stays open."""
    token = await client.create(TASK, heartbeat_timeout=4, instance_timeout=60)
    async with client.heartbeat(token, every=0.3) as beat:
        await asyncio.sleep(0.5)
        proxy[0].block()
        await asyncio.sleep(1.5)
        proxy[0].unblock()
        before = beat.pings
        await asyncio.sleep(2.5)
    assert beat.missed >= 1
    assert beat.pings - before >= 3
    assert await client.is_finished(token) == (False, None)


async def test_heartbeat_stops_the_block_when_the_cut_outlasted_the_heartbeat(
    client: Client, proxy: tuple[TcpProxy, str]
) -> None:
    """After a cut longer than the heartbeat timeout, the next ping stops the work."""
    token = await client.create(TASK, heartbeat_timeout=1, instance_timeout=60)
    reached_the_end = False
    started = time.monotonic()
    with pytest.raises(InstanceFinishedError):
        async with client.heartbeat(token, every=0.3):
            proxy[0].block()
            await asyncio.sleep(3)  # the sweeper finishes the silent instance meanwhile
            proxy[0].unblock()
            await asyncio.sleep(30)
            reached_the_end = True
    assert not reached_the_end
    assert time.monotonic() - started < 10
    assert await client.is_finished(token) == (True, "HEARTBEAT_TIMEOUT")


async def test_a_request_on_a_link_link_dropped_is_answered_after_it(
    worker: Worker, proxy: tuple[TcpProxy, str]
) -> None:
    """A silent link (1 s heartbeat) is given up and made again; the command in flight is answered."""
    async with await Client.connect(with_heartbeat(proxy[1], 1), timeout=5) as client:
        token = await client.create(TASK)
        proxy[0].stall()  # aiormq gives up on the link after ~6 s by cancelling its reader
        call = asyncio.create_task(client.set_status(token, "STARTED", timeout=30))
        await asyncio.sleep(8)
        proxy[0].cut()
        proxy[0].resume()
        await asyncio.wait_for(call, 25)
        assert client.reconnects >= 1
        assert await client.is_set(token, "STARTED")
