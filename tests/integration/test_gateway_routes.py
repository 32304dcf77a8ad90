"""The gateway's routing, as Go Statusek's gorilla/mux router (StrictSlash(true)) does it.

Any method reaches a route (health checks call GET /about), `/` says
"Welcome home!", a trailing slash or an unclean path is redirected with 301,
and any other path is Go's 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from statusek.worker.worker import Worker
from tests.integration.gateways import ask, ask_raw, running_gateway

pytestmark = pytest.mark.integration

TASK = "2-POINT LINE TASK"


@pytest.fixture(scope="module")
async def base(worker: Worker, amqp_url: str) -> AsyncIterator[str]:
    async with running_gateway(amqp_url) as url:
        yield url


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_get_about_answers_like_post(base: str, http: aiohttp.ClientSession) -> None:
    """GET /about (a health check's call) is answered as POST is."""
    got = await ask(http, base + "/about", method="GET")
    posted = await ask(http, base + "/about")
    assert (got.status, got.json) == (200, posted.json)
    assert got.json["status"] is True


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_any_method_reaches_a_route(base: str, http: aiohttp.ClientSession, method: str) -> None:
    """A create sent with another method than POST creates, as Go's router does not look at methods."""
    reply = await ask(http, base + "/instance/create", {"object_name": TASK}, method=method)
    assert reply.status == 200 and reply.json["status"] is True


async def test_head_answers_without_a_body(base: str, http: aiohttp.ClientSession) -> None:
    """HEAD /about: 200, the headers, no body."""
    reply = await ask(http, base + "/about", method="HEAD")
    assert (reply.status, reply.body) == (200, b"")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_home_says_welcome(base: str, http: aiohttp.ClientSession, method: str) -> None:
    """/ answers "Welcome home!" to any method, as text (Go sniffs it so)."""
    reply = await ask(http, base + "/", method=method)
    assert (reply.status, reply.body) == (200, b"Welcome home!")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_a_trailing_slash_is_redirected_permanently(base: str, http: aiohttp.ClientSession) -> None:
    """GET /about/?x=1: 301 to /about?x=1 with Go's little page."""
    reply = await ask(http, base + "/about/?x=1", method="GET")
    assert (reply.status, reply.headers["Location"]) == (301, "/about?x=1")
    assert reply.body == b'<a href="/about?x=1">Moved Permanently</a>.\n\n'
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"


async def test_a_post_with_a_trailing_slash_is_redirected_without_a_page(
    base: str, http: aiohttp.ClientSession
) -> None:
    """POST /instance/create/: 301 to /instance/create, nothing applied, no body."""
    reply = await ask(http, base + "/instance/create/", {"object_name": TASK})
    assert (reply.status, reply.headers["Location"], reply.body) == (301, "/instance/create", b"")


async def test_an_unclean_path_is_redirected_to_its_clean_form(
    base: str, http: aiohttp.ClientSession
) -> None:
    """//about and /event/../about: 301 to /about, no body (gorilla/mux's cleanPath)."""
    for path in ("//about", "/event/../about"):
        reply = await ask_raw(base, "GET", path)
        assert (reply.status, reply.headers["Location"], reply.body) == (301, "/about", b"")


@pytest.mark.parametrize("path", ["/instance/getInfo", "/instance/statuses", "/About"])
async def test_other_paths_are_gos_404(base: str, http: aiohttp.ClientSession, path: str) -> None:
    """A path that is no route (v2.7.2 serves no /instance/statuses): Go's "404 page not found"."""
    reply = await ask(http, base + path, {})
    assert (reply.status, reply.body) == (404, b"404 page not found\n")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
