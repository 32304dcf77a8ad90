"""Several worker processes against one broker and one database."""

from __future__ import annotations

import json
import uuid

import asyncpg

from tests.integration.conftest import Cluster


async def test_back_to_back_commands_keep_order_across_replicas(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """200 x (create, STARTED, FINISHED) published without waiting: all finish, gapless, no rejection."""
    cluster.start(3)
    await cluster.wait_for_consumers(3)
    wire = cluster.wire
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

    rows = await cluster_db.fetch(
        "SELECT instance_token, array_agg(seq ORDER BY seq) AS seqs FROM events"
        " WHERE instance_token = ANY($1::uuid[]) GROUP BY instance_token",
        [uuid.UUID(t) for t in tokens],
    )
    assert len(rows) == 200
    assert all(list(r["seqs"]) == [1, 2, 3, 4] for r in rows)
