"""The ops HTTP server: liveness, readiness and Prometheus metrics.

    GET /livez    200 while the event loop answers (also while the worker has stepped back
                  because Postgres does not answer: it rejoins by itself, a restart would not help)
    GET /readyz   200 while ready; 503 with {"ready": false, "problems": {...}} otherwise
    GET /metrics  Prometheus text

It is a few lines of asyncio rather than a web framework: three GET routes,
`Connection: close`, nothing that a probe or a scraper does not need.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from statusek.app.metrics import CONTENT_TYPE, Metrics

log = structlog.get_logger(__name__)

# Readiness: each check names a dependency and returns what is wrong with it, or None.
Check = Callable[[], Awaitable[str | None]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_REQUEST_TIMEOUT = 5.0
T = TypeVar("T")


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
        metrics: Metrics,
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
        """The port actually bound."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as e:
            raise CannotListen(self._host, self._port, e) from e
        log.info("ops server listening", listen=f"{self._host}:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), _REQUEST_TIMEOUT)
            # Headers are read and ignored: no route depends on them.
            end_of_headers = (b"\r\n", b"\n", b"")
            while await asyncio.wait_for(reader.readline(), _REQUEST_TIMEOUT) not in end_of_headers:
                pass
            method, target, *_ = request.decode("latin-1").split() or ["", ""]
            status, content_type, body = await self._route(method, target.split("?", 1)[0])
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
