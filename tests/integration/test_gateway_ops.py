"""The gateway's ops server (STATUSEK_OPS_PORT): /livez, /readyz and /metrics, beside the API port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from statusek.gateway.metrics import GATEWAY_METRIC_NAMES
from statusek.gateway.server import serve
from statusek.settings import Settings
from statusek.testing import free_port
from statusek.worker.worker import Worker
from tests.integration.gateways import ask

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Served:
    api: str  # the REST API's base URL
    ops: str  # the ops server's base URL


@contextlib.asynccontextmanager
async def serving(amqp_url: str) -> AsyncIterator[Served]:
    """`serve()` in this event loop (unauthenticated), on free ports; stopped at the end."""
    api, ops = free_port(), free_port()
    settings = Settings(
        amqp_url=amqp_url,
        http_host="127.0.0.1",
        http_port=api,
        ops_host="127.0.0.1",
        ops_port=ops,
        gateway_auth="none",
        log_level="WARNING",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield Served(f"http://127.0.0.1:{api}", f"http://127.0.0.1:{ops}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def answered(http: aiohttp.ClientSession, url: str, timeout: float = 20) -> int:
    """The HTTP status of GET `url` once something listens there."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return (await ask(http, url, method="GET")).status
        except aiohttp.ClientConnectionError:
            assert asyncio.get_running_loop().time() < deadline, f"nothing listens at {url}"
            await asyncio.sleep(0.05)


async def until_ready(http: aiohttp.ClientSession, ops: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await answered(http, ops + "/readyz") != 200:
        assert asyncio.get_running_loop().time() < deadline, "the gateway did not become ready"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
async def served(worker: Worker, amqp_url: str, http: aiohttp.ClientSession) -> AsyncIterator[Served]:
    async with serving(amqp_url) as served:
        await until_ready(http, served.ops)
        yield served


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_livez_and_readyz_answer_on_the_ops_port(served: Served, http: aiohttp.ClientSession) -> None:
    """Connected to RabbitMQ: /livez 200, /readyz 200 with no problems."""
    assert (await ask(http, served.ops + "/livez", method="GET")).status == 200
    ready = await ask(http, served.ops + "/readyz", method="GET")
    assert (ready.status, ready.json) == (200, {"ready": True, "problems": {}})


async def test_the_api_port_does_not_serve_ops_routes(served: Served, http: aiohttp.ClientSession) -> None:
    """/metrics is not on the API port: Go's 404 there."""
    assert (await ask(http, served.api + "/metrics", method="GET")).status == 404


async def test_metrics_count_requests_by_route_status_and_code(
    served: Served, http: aiohttp.ClientSession
) -> None:
    """A create and a refusal are counted under their route, HTTP status and code, and timed."""
    before = samples((await ask(http, served.ops + "/metrics", method="GET")).body.decode())
    await ask(http, served.api + "/instance/create", {"object_name": "2-POINT LINE TASK"})
    await ask(http, served.api + "/instance/create", {"object_name": "NO SUCH OBJECT"})
    await ask(http, served.api + "/nowhere", {})
    page = (await ask(http, served.ops + "/metrics", method="GET")).body.decode()
    after = samples(page)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "statusek_gateway_requests_total"
    create = {"route": "/instance/create", "http_status": "200"}
    assert grew(requests, **create, code="SUCCESS") == 1
    assert grew(requests, **create, code="OBJECT_NAME_IS_NOT_FOUND") == 1
    assert grew(requests, route="other", http_status="404", code="NOT_FOUND") == 1
    assert grew("statusek_gateway_request_duration_seconds_count", route="/instance/create") == 2
    assert after[("statusek_gateway_requests_in_flight", ())] == 0
    names = {family.name for family in text_string_to_metric_families(page)}
    # The parser names a counter family without its _total suffix.
    assert {n.removesuffix("_total") for n in GATEWAY_METRIC_NAMES} <= names


async def test_not_ready_until_rabbitmq_answers(http: aiohttp.ClientSession) -> None:
    """Before the broker answers: /livez 200, /readyz 503 saying why, and no API port yet."""
    async with serving(f"amqp://guest:guest@127.0.0.1:{free_port()}/") as served:
        assert await answered(http, served.ops + "/livez") == 200
        ready = await ask(http, served.ops + "/readyz", method="GET")
        assert (ready.status, ready.json) == (
            503,
            {"ready": False, "problems": {"rabbitmq": "not connected to RabbitMQ yet"}},
        )
        with pytest.raises(aiohttp.ClientConnectionError):
            await ask(http, served.api + "/about", method="GET")
