"""CorkedWriter over a real socket pair: writes of one loop turn leave in one socket write, in order."""

from __future__ import annotations

import asyncio
import socket

from statusek.adapters.rabbitmq.corked import CorkedWriter


async def _pair() -> tuple[asyncio.StreamReader, CorkedWriter, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return reader, CorkedWriter(writer), theirs


async def test_writes_of_one_loop_turn_leave_in_one_socket_write() -> None:
    """Three writes in a row are sent as one, on the next turn of the loop, in the order written."""
    _, writer, theirs = await _pair()
    try:
        for chunk in (b"publish", b"header", b"body"):
            writer.write(chunk)
        assert writer.writes == 0
        await asyncio.sleep(0)
        assert writer.writes == 1
        theirs.setblocking(False)
        await asyncio.sleep(0.01)
        assert theirs.recv(100) == b"publishheaderbody"
    finally:
        writer.close()
        theirs.close()


async def test_drain_sends_what_was_gathered_at_once() -> None:
    """A writer that drains (an RPC, an ack) does not wait for the next turn of the loop."""
    _, writer, theirs = await _pair()
    try:
        writer.write(b"a")
        writer.write(b"b")
        await writer.drain()
        assert writer.writes == 1
        await asyncio.sleep(0)
        assert writer.writes == 1  # nothing left for the scheduled flush
    finally:
        writer.close()
        theirs.close()
