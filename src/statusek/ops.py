"""The ops HTTP server: liveness, readiness and Prometheus metrics.

    GET /livez    200 while the event loop answers (also while the worker has stepped back
                  because Postgres does not answer: it rejoins by itself, a restart would not help)
    GET /readyz   200 while ready; 503 with {"ready": false, "problems": {...}} otherwise
    GET /metrics  Prometheus text

On aiohttp, as the gateway is: one catch-all route, so that a wrong method or path gets the
same short plain-text answers whatever aiohttp would say, and no access log (probes and scrapes
every few seconds would drown the worker's own lines).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

# Readiness: each check names a dependency and returns what is wrong with it, or None.
Check = Callable[[], Awaitable[str | None]]

# An idle connection (a scraper's keep-alive) is closed after this long.
_KEEPALIVE_TIMEOUT = 5.0
# Requests under way at close (a /readyz waits at most its check timeout) get this long.
_SHUTDOWN_TIMEOUT = 2.0
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
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=_KEEPALIVE_TIMEOUT, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
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
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        raise RuntimeError("the ops server is not listening")

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as e:
            await self._runner.cleanup()
            raise CannotListen(self._host, self._port, e) from e
        log.info("ops server listening", listen=f"{self._host}:{self.port}")

    async def close(self) -> None:
        await self._runner.cleanup()

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

    async def _handle(self, request: web.Request) -> web.Response:
        status, content_type, body = await self._route(request.method, request.path)
        headers = {"Content-Type": content_type}
        if status == 405:
            headers["Allow"] = "GET, HEAD"
        # aiohttp sends the headers of a HEAD answer without its body.
        return web.Response(status=status, body=body, headers=headers)
