"""Several broker addresses in STATUSEK_AMQP_URL: a dead one among them is skipped."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from statusek import Client
from statusek.adapters.rabbitmq.broker import Broker, Names
from tests.helpers import TASK
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def dead(url: str) -> str:
    """`url` at port 1 of its host, where nothing listens: same user, password and vhost."""
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:1"))


async def test_the_broker_skips_a_dead_address(amqp_url: str) -> None:
    """Broker.open connects to the live address of two, whichever it tries first."""
    broker = Broker(f"{dead(amqp_url)}, {amqp_url}", Names(), connect_timeout=5)
    try:
        for _ in range(2):  # successive opens start at successive addresses: one starts at the dead one
            await broker.open()
            assert broker.is_open and broker.url == amqp_url
    finally:
        await broker.close()


async def test_a_worker_and_a_client_work_with_the_first_address_dead(cluster: Cluster) -> None:
    """A worker process and a client given `dead,live` create and finish an instance."""
    live = cluster.env["STATUSEK_AMQP_URL"]
    addresses = f"{dead(live)},{live}"
    cluster.start(1, STATUSEK_AMQP_URL=addresses)
    await cluster.wait_for_consumers(1, timeout=60)
    for _ in range(2):  # two clients: one of them dials the dead address first
        async with await Client.connect(addresses, timeout=10) as client:
            assert client.url == live
            token = await client.create(TASK, instance_token=uuid.uuid4(), timeout=30)
            await client.set_status(token, "STARTED", timeout=30)
            await client.set_status(token, "FINISHED", timeout=30)
            finished, reason = await client.is_finished(token, timeout=30)
            assert finished, reason
