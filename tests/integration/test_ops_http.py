"""The ops server's HTTP, over real sockets: what probes, scrapers and wrong callers get."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from statusek.ops import OpsServer
from statusek.worker.metrics import Metrics

pytestmark = pytest.mark.standalone


async def _no_problem() -> str | None:
    return None


@contextlib.asynccontextmanager
async def ops_server(**checks: object) -> AsyncIterator[OpsServer]:
    server = OpsServer("127.0.0.1", 0, Metrics(), {"rabbitmq": _no_problem, **checks})  # type: ignore[dict-item]
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def exchange(port: int, *requests: bytes) -> bytes:
    """Send `requests` on one connection and read until the server closes it or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        received = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                while chunk := await reader.read(65536):
                    received += chunk
        return received
    finally:
        writer.close()


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: ops", *headers, "", ""]).encode()


async def test_livez_answers_200_with_its_length() -> None:
    """GET /livez is a complete HTTP/1.1 200 with Content-Length and the JSON body."""
    async with ops_server() as server:
        answer = await exchange(server.port, get("/livez", "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 17\r\n" in answer
    assert answer.endswith(b'\r\n\r\n{"status": "ok"}\n')


async def test_a_keep_alive_connection_answers_requests_in_turn() -> None:
    """Two requests on one connection get two answers, in order, the connection kept open."""
    async with ops_server() as server:
        answer = await exchange(server.port, get("/livez"), get("/readyz"))
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.index(b'{"status": "ok"}') < answer.index(b'{"ready": true')
    assert b"Connection: close" not in answer


async def test_readyz_names_the_failing_check_with_503() -> None:
    """A check that reports a problem makes /readyz 503 naming it."""

    async def broken() -> str | None:
        return "no answer"

    async with ops_server(postgres=broken) as server:
        answer = await exchange(server.port, get("/readyz", "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith(b'{"ready": false, "problems": {"postgres": "no answer"}}\n')


async def test_metrics_are_prometheus_text_and_ignore_the_query() -> None:
    """GET /metrics?x=1 serves the registry in Prometheus' text format."""
    async with ops_server() as server:
        answer = await exchange(server.port, get("/metrics?x=1", "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=" in answer
    assert b"statusek_ready 1.0" in answer


async def test_head_gets_the_headers_of_get_without_the_body() -> None:
    """HEAD /livez answers GET's status and Content-Length, and no body."""
    async with ops_server() as server:
        answer = await exchange(server.port, b"HEAD /livez HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 17\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")


async def test_another_method_gets_405_with_allow() -> None:
    """POST /livez with a body is 405 naming the allowed methods, and the connection is closed."""
    async with ops_server() as server:
        answer = await exchange(
            server.port, b"POST /livez HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", get("/livez")
        )
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"Allow: GET, HEAD\r\n" in answer
    assert b"Connection: close\r\n" in answer
    assert answer.count(b"HTTP/1.1") == 1  # the GET after the body was not read


async def test_an_unknown_path_gets_404_naming_the_routes() -> None:
    """Any other path is 404 with the three routes named."""
    async with ops_server() as server:
        answer = await exchange(server.port, get("/health", "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert answer.endswith(b"try /livez, /readyz or /metrics\n")


async def test_a_line_that_is_not_http_gets_400_and_a_close() -> None:
    """Garbage instead of a request line is 400, and the connection is closed."""
    async with ops_server() as server:
        answer = await exchange(server.port, b"hello there\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in answer


async def test_a_head_over_the_limit_gets_431() -> None:
    """Request headers of 100 KB are refused with 431 instead of being buffered."""
    async with ops_server() as server:
        answer = await exchange(server.port, get("/livez", "X-Padding: " + "a" * 100_000))
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


async def test_http_1_0_is_answered_and_closed() -> None:
    """An HTTP/1.0 request without keep-alive is answered and its connection closed."""
    async with ops_server() as server:
        answer = await exchange(server.port, b"GET /livez HTTP/1.0\r\n\r\n", get("/livez"))
    assert answer.count(b"HTTP/1.1 200 OK") == 1
    assert b"Connection: close\r\n" in answer


async def test_close_ends_idle_connections_at_once() -> None:
    """Closing the server closes a keep-alive connection that waits for its next request."""
    server = OpsServer("127.0.0.1", 0, Metrics(), {"rabbitmq": _no_problem})
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(get("/livez"))
        await reader.readuntil(b'{"status": "ok"}\n')
        async with asyncio.timeout(1):
            await server.close()
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_close_lets_a_request_under_way_finish() -> None:
    """A /readyz whose check is still running at close gets its answer before the connection ends."""
    release = asyncio.Event()

    async def slow() -> str | None:
        await release.wait()
        return None

    server = OpsServer("127.0.0.1", 0, Metrics(), {"postgres": slow})
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(get("/readyz"))
        await writer.drain()
        await asyncio.sleep(0.1)
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.1)
        release.set()
        await closing
        answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in answer
    finally:
        writer.close()


async def test_a_head_with_bare_lf_line_ends_is_answered() -> None:
    """A request typed with LF line ends (as into nc) is answered like one with CRLF."""
    async with ops_server() as server:
        answer = await exchange(server.port, b"GET /livez HTTP/1.1\nHost: ops\nConnection: close\n\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"status": "ok"}\n')


async def test_an_absolute_form_target_names_its_path() -> None:
    """GET http://host:port/livez, as a proxy sends it, is the route /livez."""
    async with ops_server() as server:
        target = f"http://127.0.0.1:{server.port}/livez?probe=1"
        answer = await exchange(server.port, get(target, "Connection: close"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_empty_lines_before_a_request_are_skipped() -> None:
    """A stray CRLF between keep-alive requests does not turn the next one into a 400."""
    async with ops_server() as server:
        answer = await exchange(server.port, get("/livez"), b"\r\n", get("/livez", "Connection: close"))
    assert answer.count(b"HTTP/1.1 200 OK") == 2


async def test_many_header_lines_over_the_limit_get_431() -> None:
    """Headers under the line limit each but over 16 KiB in all are refused with 431."""
    async with ops_server() as server:
        padding = [f"X-Padding-{i}: {'a' * 100}" for i in range(200)]
        answer = await exchange(server.port, get("/livez", *padding))
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
