"""A black-holed Postgres under the active worker: it steps back, a standby applies, it rejoins.

Worker A reaches Postgres through a proxy that stops forwarding without closing anything
(packets dropped, nothing refused); worker B reaches it directly. A is first in line, so the
broker's single active consumer; B is the standby.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from statusek.adapters.postgres.connect import ConnectOptions
from statusek.adapters.postgres.store import Store
from statusek.core.partitions import routing_headers
from statusek.testing import free_port
from statusek.worker.faults import FAULT_HEADER
from tests.helpers import eventually, ops_get, wait_status
from tests.integration.conftest import Cluster
from tests.integration.faults import TcpProxy, create_body, created, proxied

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CREATES = 20


@dataclass
class Pair:
    proxy: TcpProxy
    a: int  # ops ports
    b: int
    b_process: subprocess.Popen[bytes]


@pytest.fixture
async def pair(cluster: Cluster) -> AsyncIterator[Pair]:
    """A (through the proxy, active) and B (direct, standby), both ready, A's pool warm."""
    proxy, db_url = await proxied(cluster.env["STATUSEK_DATABASE_URL"], 5432)
    try:
        a = free_port()
        # Fault hooks act only on commands that carry the test header.
        cluster.start(1, STATUSEK_DATABASE_URL=db_url, STATUSEK_OPS_PORT=str(a), STATUSEK_FAULT_HOOKS="true")
        await wait_status(a, 200, timeout=30)
        # A applies this one: it is alone, so in line first.
        reply = await cluster.wire.request("create", create_body(str(uuid.uuid4())))
        assert reply["status"] is True, reply
        b = free_port()
        [b_process] = cluster.start(1, STATUSEK_OPS_PORT=str(b))
        await wait_status(b, 200, timeout=30)
        yield Pair(proxy, a, b, b_process)
    finally:
        proxy.resume()
        await proxy.close()


async def test_the_standby_applies_what_a_stalled_worker_holds(
    cluster: Cluster, cluster_db: asyncpg.Connection, pair: Pair
) -> None:
    """Postgres black-holed under the active worker: the standby applies 20 creates within 30 s, once each."""
    pair.proxy.stall()
    stalled = time.monotonic()
    tokens = [str(uuid.uuid4()) for _ in range(CREATES)]
    correlation_ids = [
        await cluster.wire.send("create", create_body(t), message_id=uuid.uuid4().hex) for t in tokens
    ]
    unready_after, _ = await wait_status(pair.a, 503, timeout=5)
    codes: list[int] = []

    async def applied() -> int:
        codes.append((await ops_get(pair.a, "/readyz"))[0])
        return await created(cluster_db, tokens)

    await eventually(applied, 30, equals=CREATES)
    applied_after = time.monotonic() - stalled
    print(f"A unready after {unready_after:.1f} s; B applied {CREATES} creates {applied_after:.1f} s in")
    assert set(codes) == {503}, codes
    replies = [await cluster.wire.reply(c, timeout=10) for c in correlation_ids]
    assert [r["code"] for r in replies] == ["SUCCESS"] * CREATES
    assert [r["data"]["instance_token"] for r in replies] == tokens
    events = await cluster_db.fetchval(
        "SELECT count(*) FROM events WHERE kind = 'created' AND instance_token = ANY($1::uuid[])",
        [uuid.UUID(t) for t in tokens],
    )
    assert events == CREATES


async def test_a_stalled_worker_rejoins_when_postgres_answers(cluster: Cluster, pair: Pair) -> None:
    """Once Postgres answers again the worker that stepped back is ready and applies commands again."""
    pair.proxy.stall()
    await wait_status(pair.a, 503, timeout=5)
    await eventually(lambda: stepped_back(pair.a), 15, equals=1)
    pair.proxy.resume()
    await wait_status(pair.a, 200, timeout=10)
    # With the standby gone, only A can answer.
    pair.b_process.terminate()
    await asyncio.to_thread(pair.b_process.wait, 20)
    correlation_id = await cluster.wire.send("create", create_body(str(uuid.uuid4())))
    reply = await cluster.wire.reply(correlation_id, timeout=20)
    assert reply["code"] == "SUCCESS", reply


async def test_a_window_cut_off_before_its_commit_is_applied_once_by_the_standby(
    cluster: Cluster, cluster_db: asyncpg.Connection, pair: Pair
) -> None:
    """Postgres black-holed while a window's transaction is open: the standby applies its command once."""
    token = str(uuid.uuid4())
    correlation_id = await cluster.wire.send(
        "create",
        create_body(token),
        message_id=uuid.uuid4().hex,
        headers={**routing_headers(create_body(token)), FAULT_HEADER: "stall-before-commit"},
    )

    async def holding() -> int:
        # A's window has written everything and waits before its COMMIT.
        return int(
            any(line.get("event") == "fault hook: stalling before commit" for line in cluster.log_lines())
        )

    await eventually(holding, 10, equals=1)
    pair.proxy.stall()  # the COMMIT never reaches Postgres; the server ends the transaction itself
    stalled = time.monotonic()
    await eventually(lambda: created(cluster_db, [token]), 30, equals=1)
    print(f"the standby applied the cut-off window's command {time.monotonic() - stalled:.1f} s in")
    reply = await cluster.wire.reply(correlation_id, timeout=10)
    assert (reply["code"], reply["data"]["instance_token"]) == ("SUCCESS", token)
    events = await cluster_db.fetchval(
        "SELECT count(*) FROM events WHERE instance_token = $1::uuid", uuid.UUID(token)
    )
    assert events == 1


async def stepped_back(port: int) -> int:
    """1 once the worker on `port` says it stepped back from the command queues."""
    status, body = await ops_get(port, "/readyz")
    return int(
        status == 503 and "stepped back" in json.loads(body or b"{}").get("problems", {}).get("consumer", "")
    )


async def test_every_pooled_connection_is_bounded_and_kept_alive(database_url: str) -> None:
    """A pool connection has the statement, lock and idle timeouts set and TCP keepalives on."""
    store = await Store.open(database_url, options=ConnectOptions(statement_timeout=7, lock_timeout=3))
    try:
        async with store.connection() as conn:
            shown = [
                await conn.fetchval(f"SHOW {name}")
                for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
            ]
            sock = conn._con._transport.get_extra_info("socket")
            keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    finally:
        await store.close()
    assert shown == ["7s", "3s", "10s"]
    assert (keepalive, idle) == (1, 10)
