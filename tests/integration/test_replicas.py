"""Several worker processes against one broker and one database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.integration.wire import Wire


def spawn_workers(env: dict[str, str], count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "statusek", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]


@pytest.fixture
def three_workers(worker_env: dict[str, str], worker: object) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three more worker processes beside the session's in-process one."""
    procs = spawn_workers(worker_env, 3)
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def test_back_to_back_commands_keep_order_across_replicas(
    three_workers: list[subprocess.Popen[bytes]], wire: Wire, db: asyncpg.Connection
) -> None:
    """200 x (create, STARTED, FINISHED) published without waiting: all finish, gapless, no rejection."""
    await asyncio.sleep(2)  # let the replicas start and register as consumers
    assert all(p.poll() is None for p in three_workers)
    tokens = [str(uuid.uuid4()) for _ in range(200)]
    correlation_ids = []
    for t in tokens:
        correlation_ids.append(
            await wire.send("create", {"object_name": "2-POINT LINE TASK", "instance_token": t})
        )
        correlation_ids.append(await wire.send("set-status", {"instance_token": t, "status_name": "STARTED"}))
        correlation_ids.append(
            await wire.send("set-status", {"instance_token": t, "status_name": "FINISHED"})
        )

    replies = [await wire.reply(c, timeout=60) for c in correlation_ids]
    assert [r["code"] for r in replies if r["code"] != "SUCCESS"] == []
    for t in tokens:
        finished = await wire.finished(t, timeout=30)
        assert json.loads(finished.body)["reason"] == "ALL_MANDATORY_STATUSES_ARE_SET"

    rows = await db.fetch(
        "SELECT instance_token, array_agg(seq ORDER BY seq) AS seqs FROM events"
        " WHERE instance_token = ANY($1::uuid[]) GROUP BY instance_token",
        [uuid.UUID(t) for t in tokens],
    )
    assert len(rows) == 200
    assert all(list(r["seqs"]) == [1, 2, 3, 4] for r in rows)
