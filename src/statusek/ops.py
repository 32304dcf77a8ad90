"""The ops HTTP server: liveness, readiness and Prometheus metrics.

    GET /livez    200 while the event loop answers (also while the worker has stepped back
                  because Postgres does not answer: it rejoins by itself, a restart would not help)
    GET /readyz   200 while ready; 503 with {"ready": false, "problems": {...}} otherwise
    GET /metrics  Prometheus text

A small HTTP/1.1 server on asyncio's streams rather than aiohttp: three GET routes need no
framework, and importing aiohttp's web server cost the worker about 8 MiB of its peak RSS
(docs/development.md, "Benchmarks"). Keep-alive connections (a scraper's) close after
`_KEEPALIVE_TIMEOUT` idle; a request with a body, a head over `_HEAD_LIMIT` bytes or a line that
is not HTTP gets its error and the connection is closed. No access log: probes and scrapes every
few seconds would drown the worker's own lines. Lenient where RFC 9112 lets a server be: lines
may end in a bare LF (a request typed into `nc`), empty lines before a request are skipped, and an
absolute-form target (`GET http://host:9464/metrics`, as a proxy sends) names its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

# Readiness: each check names a dependency and returns what is wrong with it, or None.
Check = Callable[[], Awaitable[str | None]]

# An idle connection (a scraper's keep-alive) is closed after this long.
_KEEPALIVE_TIMEOUT = 5.0
# Requests under way at close (a /readyz waits at most its check timeout) get this long.
_SHUTDOWN_TIMEOUT = 2.0
# A request line and headers longer than this are refused (431): probes and scrapers send a few hundred.
_HEAD_LIMIT = 16 * 1024
T = TypeVar("T")


class Scraped(Protocol):
    """What the ops server serves: a worker's `Metrics` or a gateway's `GatewayMetrics`."""

    @property
    def ready(self) -> Gauge: ...

    def render(self) -> bytes: ...


class CannotListen(Exception):
    """The ops server cannot bind its address (taken by another process, or not ours): the worker
    stops before it connects anywhere, rather than run without probes or metrics unseen."""

    def __init__(self, host: str, port: int, error: OSError):
        self.host = host
        self.port = port
        self.in_use = error.errno == errno.EADDRINUSE
        # asyncio's message repeats the address; the errno's own text is the reason.
        self.reason = os.strerror(error.errno).lower() if error.errno else str(error)
        super().__init__(f"cannot listen on {host}:{port}: {self.reason}")


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Scraped,
        checks: dict[str, Check],
        *,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
        check_timeout: float = 2.0,
    ):
        self._host = host
        self._port = port
        self._metrics = metrics
        self._checks = checks
        self._before_scrape = before_scrape
        self._check_timeout = check_timeout
        self._server: asyncio.Server | None = None
        # Each connection's task, and which of them wait for a request (closed at once at close).
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None]] = set()
        self._closing = False
        # Checks and refreshes that outlived their timeout, cancelled and left to end on their own.
        self._abandoned: set[asyncio.Task[object]] = set()

    async def _bounded(self, work: Awaitable[T]) -> T:
        """`work`, or TimeoutError after the check timeout without waiting for `work` to end.

        `asyncio.wait_for` waits for a cancelled task to finish, and cancelling a query on a
        black-holed database waits for a cancel request that never arrives: a probe would hang.
        """
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=self._check_timeout)
        if task in done:
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        raise TimeoutError

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its failure was reported as the timeout already

    @property
    def port(self) -> int:
        """The port actually bound (the one the system chose for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the ops server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._connection, self._host, self._port, limit=_HEAD_LIMIT
            )
        except OSError as e:
            raise CannotListen(self._host, self._port, e) from e
        log.info("ops server listening", listen=f"{self._host}:{self.port}")

    async def close(self) -> None:
        """Stop listening, close idle connections, and give requests under way `_SHUTDOWN_TIMEOUT`."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        for task in self._idle:
            task.cancel()
        if busy := self._connections - self._idle:
            _, late = await asyncio.wait(busy, timeout=_SHUTDOWN_TIMEOUT)
            for task in late:
                task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        await self._server.wait_closed()
        self._server = None

    async def problems(self) -> dict[str, str]:
        """Run every readiness check concurrently; a check that hangs is a problem too."""

        async def run(name: str, check: Check) -> tuple[str, str | None]:
            try:
                return name, await self._bounded(check())
            except TimeoutError:
                return name, f"no answer within {self._check_timeout:g} s"
            except Exception as e:
                return name, f"{type(e).__name__}: {e}"

        results = await asyncio.gather(*(run(name, check) for name, check in self._checks.items()))
        found = {name: problem for name, problem in results if problem is not None}
        self._metrics.ready.set(0 if found else 1)
        return found

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/livez":
            return 200, "application/json", b'{"status": "ok"}\n'
        if path == "/readyz":
            problems = await self.problems()
            body = json.dumps({"ready": not problems, "problems": problems}).encode() + b"\n"
            return (503 if problems else 200), "application/json", body
        if path == "/metrics":
            if self._before_scrape is not None:
                try:
                    await self._bounded(self._before_scrape())
                except Exception as e:
                    # Gauges keep their last values; the counters are still worth serving.
                    log.warning("metrics refresh failed", error=f"{type(e).__name__}: {e}")
            await self.problems()
            return 200, CONTENT_TYPE, self._metrics.render()
        return 404, "text/plain", b"try /livez, /readyz or /metrics\n"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer a connection's requests in turn until it closes, idles or sends what this does not read."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            # Also a connection accepted just before `close`, whose task starts after it: answer none.
            while not self._closing:
                self._idle.add(task)
                try:
                    async with asyncio.timeout(_KEEPALIVE_TIMEOUT):
                        head = await _read_head(reader)
                except (asyncio.LimitOverrunError, _HeadTooLarge):
                    await _respond(writer, 431, "text/plain", b"request head too large\n", keep=False)
                    return
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # idle too long, or closed by the client
                finally:
                    self._idle.discard(task)
                request = _Request.parse(head)
                if request is None:
                    await _respond(writer, 400, "text/plain", b"not an HTTP/1 request\n", keep=False)
                    return
                if request.has_body and request.method in ("GET", "HEAD"):
                    await _respond(writer, 400, "text/plain", b"a GET has no body\n", keep=False)
                    return
                status, content_type, body = await self._route(request.method, request.path)
                # Nothing here reads a body: after one, close rather than read on from inside it.
                keep = request.keep_alive and not request.has_body and not self._closing
                await _respond(writer, status, content_type, body, keep=keep, head=request.method == "HEAD")
                if not keep:
                    return
        except ConnectionError:
            pass  # the client went away mid-answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@dataclass(frozen=True, slots=True)
class _Request:
    """What the ops server reads of a request: method, path, whether a body follows, keep-alive."""

    method: str
    path: str
    has_body: bool
    keep_alive: bool

    @classmethod
    def parse(cls, lines: list[str]) -> _Request | None:
        """The request of a head's `lines` (request line, then headers), or None if not HTTP/1."""
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            return None
        path = _path(target)
        if not version.startswith("HTTP/1.") or path is None or not method.isalpha():
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                return None
            headers[name.strip().lower()] = value.strip().lower()
        connection = headers.get("connection", "")
        keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        length = headers.get("content-length", "0")
        has_body = "transfer-encoding" in headers or not (length.isdigit() and int(length) == 0)
        return cls(method, path, has_body=has_body, keep_alive=keep_alive)


def _path(target: str) -> str | None:
    """The decoded path of an origin-form (`/metrics?x`) or absolute-form (`http://h/metrics`) target."""
    if target.startswith("/"):
        return unquote(target.partition("?")[0])
    if target.lower().startswith(("http://", "https://")):
        return unquote(urlsplit(target).path) or "/"
    return None


class _HeadTooLarge(Exception):
    """A request head longer than `_HEAD_LIMIT` in all (each line is bounded by the stream's limit)."""


async def _read_head(reader: asyncio.StreamReader) -> list[str]:
    """A request's line and header lines, without their CRLF or bare LF, up to the empty line.

    Empty lines before the request line are skipped (RFC 9112, section 2.2). Raises
    `asyncio.IncompleteReadError` when the client closes first.
    """
    lines: list[str] = []
    size = 0
    while True:
        line = await reader.readuntil(b"\n")
        size += len(line)
        if size > _HEAD_LIMIT:
            raise _HeadTooLarge
        text = line.decode("latin-1").rstrip("\r\n")
        if text:
            lines.append(text)
        elif lines:
            return lines


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    body: bytes,
    *,
    keep: bool,
    head: bool = False,
) -> None:
    """Write one answer; a HEAD gets the headers a GET would, without the body."""
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    if not keep:
        lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))
    await writer.drain()
