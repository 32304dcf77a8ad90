"""Helpers of the gateway tests: a gateway in this event loop, and requests that return what came back."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from statusek.client import Client
from statusek.gateway.server import GatewayServer


@asynccontextmanager
async def running_gateway(amqp_url: str, **options: Any) -> AsyncIterator[str]:
    """A gateway on a free port of 127.0.0.1 with a client of `amqp_url`; its base URL."""
    async with await Client.connect(amqp_url) as client:
        server = GatewayServer(client, "127.0.0.1", 0, **options)
        await server.start()
        try:
            yield f"http://127.0.0.1:{server.port}"
        finally:
            await server.stop()


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: its status, headers and body, and the body as JSON when it is."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


async def ask(
    http: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    method: str = "POST",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request, redirects not followed."""
    payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
    async with http.request(method, url, data=payload, headers=headers, allow_redirects=False) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def ask_raw(base: str, method: str, target: str) -> Reply:
    """A request with its target sent as written (HTTP clients resolve `..` before sending)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return Reply(int(status_line.split()[1]), headers, body)


def basic(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic credentials."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
