"""Several broker addresses: STATUSEK_AMQP_URL as a comma-separated list, and failing over between them.

    amqp://u:p@rabbit-1:5672/v,amqp://u:p@rabbit-2:5672/v,amqp://u:p@rabbit-3:5672/v

A connection is made to the first address that answers, trying them in turn from
an offset that moves on with every attempt and starts at random in each process,
so that replicas spread over the nodes of a cluster and a dead node is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractConnection, TimeoutType

from statusek.adapters.rabbitmq.errors import describe
from statusek.redact import mask_url

VARIABLE = "STATUSEK_AMQP_URL"


class Connection(aio_pika.Connection):
    """aio-pika's connection, closed when its connect fails.

    aio_pika.connect leaves the connection it made unclosed when the handshake fails. The
    failure's traceback keeps it alive, and when the garbage collector takes it later where no
    loop runs, its `__del__` makes a `close()` coroutine that is never awaited: the
    "coroutine 'Connection.close' was never awaited" RuntimeWarning of some test runs.
    """

    async def connect(self, timeout: TimeoutType = None) -> None:
        try:
            await super().connect(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise


# Where the next connect_first starts in its list: random per process, one further on every call.
_offsets = itertools.count(random.randrange(1 << 16))


def with_heartbeat(value: str, seconds: int) -> str:
    """The comma-separated AMQP URLs of `value`, each asking for a `seconds` heartbeat unless it names one.

    aiormq asks for 60 s when a URL says nothing, whatever the broker proposes.
    """
    urls = []
    for url in split_urls(value):
        parts = urlsplit(url)
        named = any(p.split("=", 1)[0] == "heartbeat" for p in parts.query.split("&"))
        if named or parts.scheme not in ("amqp", "amqps"):  # not a URL to add to: refused as written
            urls.append(url)
        else:
            query = f"{parts.query}&heartbeat={seconds}" if parts.query else f"heartbeat={seconds}"
            urls.append(urlunsplit(parts._replace(query=query)))
    return ",".join(urls)


def split_urls(value: str, *, variable: str = VARIABLE) -> list[str]:
    """The AMQP URLs of a comma-separated list, spaces around commas ignored.

    Raises ValueError naming `variable` when the list or an entry of it is empty
    (`a,,b`, a trailing comma); the message never holds a password.
    """
    urls = [part.strip() for part in value.split(",")]
    if not any(urls):
        raise ValueError(f"{variable} is empty: give an AMQP URL, or several separated by commas")
    empty = [str(i + 1) for i, url in enumerate(urls) if not url]
    if empty:
        raise ValueError(
            f"{variable} has an empty entry (number {', '.join(empty)} of {len(urls)}) in "
            f"{mask_url(value)!r}: separate AMQP URLs by single commas"
        )
    return urls


class NoBrokerReachable(ConnectionError):
    """None of several addresses opened a connection: says which were tried and why each failed.

    The last attempt's error is the cause (`__cause__`); every password is masked.
    """

    def __init__(self, attempts: Sequence[tuple[str, BaseException]]):
        self.attempts = list(attempts)
        self.urls = [url for url, _ in self.attempts]
        tried = "; ".join(f"{mask_url(url)}: {describe(e, url)}" for url, e in self.attempts)
        super().__init__(f"no broker address of {len(self.attempts)} answered ({tried})")


def rotated(urls: Sequence[str], start: int) -> list[str]:
    """`urls` from index `start` (modulo their number) round to the one before it."""
    if not urls:
        return []
    start %= len(urls)
    return [*urls[start:], *urls[:start]]


async def connect_first(
    urls: Sequence[str],
    *,
    timeout: float,
    client_properties: dict[str, Any],
    start: int | None = None,
    connection_class: type[Connection] = Connection,
) -> tuple[AbstractConnection, str]:
    """The first connection that opens, trying `urls` in turn, and the URL it was made to.

    Each attempt is bounded by `timeout` seconds. The first address tried is the
    one at `start`, by default the process's rotating offset. When every address
    fails: with one address, its error as it was raised (callers describe it
    against that URL); with several, NoBrokerReachable naming each one.
    """
    if not urls:
        raise ValueError("no broker address to connect to")
    order = rotated(urls, next(_offsets) if start is None else start)
    attempts: list[tuple[str, BaseException]] = []
    for url in order:
        try:
            connection = await _connect_within(
                timeout, url, client_properties=client_properties, connection_class=connection_class
            )
        except Exception as e:  # any failure of this address: try the next one
            attempts.append((url, e))
            continue
        return connection, url
    last = attempts[-1][1]
    if len(attempts) == 1:
        raise last
    raise NoBrokerReachable(attempts) from last


async def _connect_within(timeout: float, url: str, **options: Any) -> AbstractConnection:
    """aio_pika.connect bounded by `timeout`; a connection that opens as the time runs out is closed.

    Cancelling the connect itself at the deadline could interrupt it after the broker accepted
    the connection and leave that connection open, unreferenced, until garbage collection.
    """
    attempt: asyncio.Task[AbstractConnection] = asyncio.create_task(aio_pika.connect(url, **options))
    try:
        done, _ = await asyncio.wait({attempt}, timeout=timeout)
        if done:
            return attempt.result()
        raise TimeoutError(f"no connection within {timeout:g} s")
    finally:
        # Timed out, or the caller was cancelled meanwhile.
        if not attempt.done():
            attempt.cancel()
            attempt.add_done_callback(_close_if_opened)


# Closings of connections opened too late, referenced until done (the loop holds tasks weakly).
_closing: set[asyncio.Task[None]] = set()


def _close_if_opened(attempt: asyncio.Task[AbstractConnection]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        closing = asyncio.create_task(attempt.result().close())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
