"""Several broker addresses: splitting STATUSEK_AMQP_URL, and connecting to the first that answers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aio_pika
import pytest

from statusek.adapters.rabbitmq.endpoints import (
    NoBrokerReachable,
    connect_first,
    rotated,
    split_urls,
    with_heartbeat,
)
from statusek.settings import Settings

A = "amqp://u:s3cret-a@127.0.0.1:5672/v"
B = "amqp://u:s3cret-b@127.0.0.1:5673/v"
C = "amqp://u:s3cret-c@127.0.0.1:5674/v"


def test_a_single_url_is_a_list_of_one() -> None:
    """A plain URL, as before, is the only address."""
    assert split_urls(A) == [A]


def test_spaces_around_commas_are_ignored() -> None:
    """`a , b,c` gives the three URLs without their spaces."""
    assert split_urls(f" {A} ,\t{B},{C} ") == [A, B, C]


@pytest.mark.parametrize("value", [f"{A},,{B}", f"{A},", f",{A}", f"{A}, ,{B}"])
def test_an_empty_entry_is_an_error_naming_the_variable(value: str) -> None:
    """An empty entry is refused with the variable's name, and no password in the message."""
    with pytest.raises(ValueError, match="STATUSEK_AMQP_URL") as caught:
        split_urls(value)
    assert "s3cret" not in str(caught.value)


def test_an_empty_value_is_an_error_naming_the_variable() -> None:
    """Nothing but spaces is refused too."""
    with pytest.raises(ValueError, match="STATUSEK_AMQP_URL is empty"):
        split_urls("  ")


def test_the_error_names_the_variable_it_is_given() -> None:
    """A caller reading another variable gets that variable's name in the error."""
    with pytest.raises(ValueError, match="STATUSEK_TEST_AMQP_URL"):
        split_urls(",", variable="STATUSEK_TEST_AMQP_URL")


def test_rotated_starts_at_the_offset_modulo_the_length() -> None:
    """Offset 4 of three addresses starts at the second, and wraps round."""
    assert rotated([A, B, C], 4) == [B, C, A]


class FakeConnection:
    def __init__(self, url: str):
        self.url = url
        self.closed = False

    async def close(self) -> None:
        self.closed = True


Behaviour = Callable[[str], Awaitable[FakeConnection]]


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], dict[str, Behaviour]]]:
    """aio_pika.connect replaced: it records each URL dialled and does what the test set for it."""
    calls: list[str] = []
    behaviours: dict[str, Behaviour] = {}

    async def fake_connect(url: str, **_: Any) -> FakeConnection:
        calls.append(url)
        return await behaviours.get(url, opens)(url)

    monkeypatch.setattr(aio_pika, "connect", fake_connect)
    yield calls, behaviours


async def opens(url: str) -> FakeConnection:
    return FakeConnection(url)


async def refused(url: str) -> FakeConnection:
    raise ConnectionRefusedError(111, f"Connect call failed ('127.0.0.1', {url[-6:-2]})")


async def hangs(url: str) -> FakeConnection:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def test_the_first_address_that_opens_is_used(dialled: tuple[list[str], dict[str, Behaviour]]) -> None:
    """A refused address is skipped; the connection and URL of the next one are returned."""
    calls, behaviours = dialled
    behaviours[A] = refused
    connection, url = await connect_first([A, B, C], timeout=1, client_properties={}, start=0)
    assert url == B and calls == [A, B]
    assert isinstance(connection, FakeConnection) and connection.url == B


async def test_the_first_attempt_is_at_the_start_offset(
    dialled: tuple[list[str], dict[str, Behaviour]],
) -> None:
    """With start=2 the third address is dialled first."""
    calls, _ = dialled
    _, url = await connect_first([A, B, C], timeout=1, client_properties={}, start=2)
    assert url == C and calls == [C]


async def test_successive_calls_rotate_the_first_address(
    dialled: tuple[list[str], dict[str, Behaviour]],
) -> None:
    """Without a start, three calls begin at three different addresses, in turn."""
    calls, _ = dialled
    for _ in range(3):
        await connect_first([A, B, C], timeout=1, client_properties={})
    assert sorted(calls) == [A, B, C]
    assert rotated([A, B, C], [A, B, C].index(calls[0])) == calls


async def test_each_attempt_is_bounded_by_the_timeout(
    dialled: tuple[list[str], dict[str, Behaviour]],
) -> None:
    """An address that never answers is given up after `timeout`, and the next one is tried."""
    _, behaviours = dialled
    behaviours[A] = hangs
    loop = asyncio.get_running_loop()
    began = loop.time()
    _, url = await connect_first([A, B], timeout=0.2, client_properties={}, start=0)
    assert url == B and loop.time() - began < 2


async def test_a_connection_that_opens_as_the_time_runs_out_is_closed(
    dialled: tuple[list[str], dict[str, Behaviour]],
) -> None:
    """An attempt that still opens after its timeout is closed, not left open and unreferenced."""
    _, behaviours = dialled
    late: list[FakeConnection] = []

    async def opens_despite_the_cancel(url: str) -> FakeConnection:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        late.append(FakeConnection(url))  # the broker had accepted it as the cancel came
        return late[-1]

    behaviours[A] = opens_despite_the_cancel
    _, url = await connect_first([A, B], timeout=0.05, client_properties={}, start=0)
    await asyncio.sleep(0.01)
    assert url == B
    assert [(c.url, c.closed) for c in late] == [(A, True)]


async def test_one_address_failing_raises_its_own_error(
    dialled: tuple[list[str], dict[str, Behaviour]],
) -> None:
    """With a single address its error comes out unchanged, for the caller to describe."""
    _, behaviours = dialled
    behaviours[A] = refused
    with pytest.raises(ConnectionRefusedError):
        await connect_first([A], timeout=1, client_properties={})


async def test_all_addresses_failing_names_each_without_its_password(
    dialled: tuple[list[str], dict[str, Behaviour]],
) -> None:
    """The error lists every address tried, password masked, and why each failed; the last is the cause."""
    calls, behaviours = dialled
    behaviours[A] = refused
    behaviours[B] = hangs
    with pytest.raises(NoBrokerReachable) as caught:
        await connect_first([A, B], timeout=0.1, client_properties={}, start=1)
    message = str(caught.value)
    assert calls == [B, A] and caught.value.urls == [B, A]
    assert "s3cret" not in message
    assert "amqp://u:***@127.0.0.1:5672/v: connection refused" in message
    assert "amqp://u:***@127.0.0.1:5673/v: no answer from the broker in time" in message
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert isinstance(caught.value, ConnectionError)  # callers' link-error handling catches it


async def test_an_empty_list_is_refused() -> None:
    """No address at all is a programming error, not a connection failure."""
    with pytest.raises(ValueError):
        await connect_first([], timeout=1, client_properties={})


async def test_a_failed_handshake_closes_the_connection_it_made() -> None:
    """A peer that hangs up before the AMQP handshake leaves no connection for `__del__` to close."""

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(Exception) as caught:
            await connect_first([f"amqp://guest:guest@127.0.0.1:{port}/"], timeout=5, client_properties={})
    # The failure's traceback holds the connection aio_pika.connect made, as a test keeping it would.
    assert caught.value.__traceback__ is not None
    made = [o for o in gc.get_objects() if isinstance(o, aio_pika.Connection) and o.url.port == port]
    assert made and all(c.is_closed for c in made)


def test_with_heartbeat_asks_each_address_for_it() -> None:
    """Every URL of the list gets `heartbeat=`, after any query it has."""
    assert with_heartbeat("amqp://a/v, amqps://b/v?cafile=/ca.pem", 10) == (
        "amqp://a/v?heartbeat=10,amqps://b/v?cafile=/ca.pem&heartbeat=10"
    )


def test_with_heartbeat_leaves_a_url_that_names_one() -> None:
    """A URL's own heartbeat wins over the setting."""
    assert with_heartbeat("amqp://u:p@a/v?heartbeat=1", 10) == "amqp://u:p@a/v?heartbeat=1"


def test_the_worker_dials_with_the_heartbeat_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """STATUSEK_AMQP_HEARTBEAT (10 s by default) goes into the URL the worker and the gateway dial."""
    monkeypatch.setenv("STATUSEK_AMQP_URL", "amqp://u:p@a/v")
    assert Settings().amqp_link_url == "amqp://u:p@a/v?heartbeat=10"
    monkeypatch.setenv("STATUSEK_AMQP_HEARTBEAT", "0")
    assert Settings().amqp_link_url == "amqp://u:p@a/v?heartbeat=0"


def test_with_heartbeat_leaves_what_is_not_an_amqp_url() -> None:
    """A value refused later is refused as it was written."""
    assert with_heartbeat("localhost", 10) == "localhost"
