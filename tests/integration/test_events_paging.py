"""get-events in pages over an instance of 10,001 events, made through the worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from statusek.client import Client
from statusek.worker.worker import Worker
from tests.helpers import create, statusek
from tests.integration.wire import Wire

PINGS = 10_000


@pytest.fixture(scope="module")
async def long_log(wire: Wire) -> AsyncIterator[str]:
    """An instance with 10,000 pings, published without waiting for replies; then the last reply."""
    token = await create(wire, instance_timeout=3600)
    last = ""
    for start in range(0, PINGS, 500):
        sent = await asyncio.gather(
            *(
                wire.send("ping", {"instance_token": token, "message": f"ping {i}"})
                for i in range(start, min(start + 500, PINGS))
            )
        )
        last = sent[-1]
    # Commands of one publisher are applied in order: when the last is answered, all are.
    await wire.reply(last, timeout=300)
    yield token


async def test_pages_of_1000_cover_every_seq_once(wire: Wire, long_log: str) -> None:
    """limit 1000 from after_seq 0: eleven pages, seqs 1..10001 contiguous, the last with no next."""
    seqs: list[int] = []
    after, pages = 0, 0
    while True:
        body = {"instance_token": long_log, "after_seq": after, "limit": 1000}
        data = (await wire.query("get-events", body))["data"]
        pages += 1
        assert len(data["events"]) == (1000 if data["next_after_seq"] is not None else 1)
        seqs.extend(e["seq"] for e in data["events"])
        if data["next_after_seq"] is None:
            break
        after = data["next_after_seq"]
    assert pages == 11
    assert seqs == list(range(1, PINGS + 2))


async def test_get_events_without_paging_fields_gives_the_first_1000(wire: Wire, long_log: str) -> None:
    """A body of only instance_token (as before paging) answers the first 1000 and where to go on."""
    data = (await wire.query("get-events", {"instance_token": long_log}))["data"]
    assert [e["seq"] for e in data["events"]] == list(range(1, 1001))
    assert data["next_after_seq"] == 1000


async def test_one_page_of_10000(wire: Wire, long_log: str) -> None:
    """The largest page: 10,000 events, in order, and the one left after it."""
    data = (await wire.query("get-events", {"instance_token": long_log, "limit": 10_000}))["data"]
    assert [e["seq"] for e in data["events"]] == list(range(1, 10_001))
    assert data["next_after_seq"] == 10_000


async def test_the_client_follows_the_pages(worker: Worker, amqp_url: str, long_log: str) -> None:
    """Client.get_events returns all 10,001 events; after_seq and limit cut out a slice."""
    async with await Client.connect(amqp_url) as client:
        every = await client.get_events(long_log, timeout=60)
        middle = await client.get_events(long_log, after_seq=4_999, limit=2_500)
    assert [e["seq"] for e in every] == list(range(1, PINGS + 2))
    assert every[-1]["message"] == f"ping {PINGS - 1}"
    assert [e["seq"] for e in middle] == list(range(5_000, 7_500))


async def test_show_lists_every_event(worker: Worker, worker_env: dict[str, str], long_log: str) -> None:
    """`statusek show --json` still prints every event of a long log."""
    shown = await statusek(worker_env, "show", long_log, "--json", timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert [e["seq"] for e in json.loads(shown.stdout)["events"]] == list(range(1, PINGS + 2))
