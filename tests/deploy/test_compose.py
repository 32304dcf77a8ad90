"""deploy/compose.yaml end to end: the gateway over HTTP, and two worker replicas, one SIGKILLed under load.

The tests talk to the stack only from outside, as a client would: HTTP as the gateway's caller of
deploy/gateway/users through the published gateway port, AMQP as the users of definitions.json
through the published broker port, and SQL through the published Postgres port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.deploy.conftest import GATEWAY_CALLER, REPORT_LINES, Stack
from tests.integration.wire import Wire
from tests.log_secrets import password

pytestmark = [pytest.mark.docker, pytest.mark.slow]

INSTANCES = 300
PUBLISHERS = 8  # concurrent, so the active worker holds a backlog of deliveries when it is killed
KILL_AT = INSTANCES // 2  # instances fully confirmed
FINISHED = "ALL_MANDATORY_STATUSES_ARE_SET"


def commands(token: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("create", {"object_name": "2-POINT LINE TASK", "instance_token": token}),
        ("set-status", {"instance_token": token, "status_name": "STARTED"}),
        ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
    ]


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> str:
    """The gateway's published URL, once its container is healthy (its /readyz, asked by the image's
    HEALTHCHECK on the ops port)."""
    stack.wait_healthy("gateway", 1)
    return stack.gateway_url


async def post(http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json(content_type=None)


def as_caller() -> aiohttp.ClientSession:
    user, secret = GATEWAY_CALLER
    credentials = {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}
    return aiohttp.ClientSession(headers=credentials, timeout=aiohttp.ClientTimeout(30))


async def test_the_gateway_creates_and_finishes_an_instance_over_http(gateway: str) -> None:
    """create, STARTED, FINISHED, then checkIsFinished answers finished, through the published port."""
    async with as_caller() as http:
        code, created = await post(http, f"{gateway}/instance/create", {"object_name": "2-POINT LINE TASK"})
        assert (code, created["status"]) == (200, True), created
        token = created["data"]["instance_token"]
        for status in ("STARTED", "FINISHED"):
            body = {"instance_token": token, "status_name": status}
            code, answer = await post(http, f"{gateway}/status/setStatus", body)
            assert (code, answer["status"]) == (200, True), answer
        code, finished = await post(http, f"{gateway}/instance/checkIsFinished", {"instance_token": token})
    assert code == 200 and finished["data"]["instance_is_finished"] is True, finished


async def test_the_gateway_records_its_http_caller_as_the_actor(stack: Stack, gateway: str) -> None:
    """Events of a create through the gateway name its caller (users file), not the gateway's AMQP user."""
    async with as_caller() as http:
        _, created = await post(http, f"{gateway}/instance/create", {"object_name": "2-POINT LINE TASK"})
    token = uuid.UUID(created["data"]["instance_token"])
    db = await asyncpg.connect(stack.database_url)
    try:
        actors = await db.fetch("SELECT DISTINCT actor FROM events WHERE instance_token = $1", token)
    finally:
        await db.close()
    assert [r["actor"] for r in actors] == [GATEWAY_CALLER[0]]


async def test_the_gateway_refuses_a_caller_without_credentials(gateway: str) -> None:
    """A request with no Authorization header is answered 401: the stack runs with Basic authentication."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(30)) as http:
        code, _ = await post(http, f"{gateway}/instance/create", {"object_name": "2-POINT LINE TASK"})
    assert code == 401


def active_worker(stack: Stack, workers: list[str]) -> str:
    """The worker holding the single active consumer of statusek.commands (asked of the broker)."""
    queue = stack.management("queues/statusek/statusek.commands")
    for consumer in queue.get("consumer_details", []):
        if consumer.get("active", True) and consumer.get("activity_status", "single_active") != "waiting":
            peer = consumer["channel_details"]["peer_host"]
            for container in workers:
                if peer in stack.ip(container):
                    return container
    raise AssertionError(f"no active consumer on statusek.commands: {queue.get('consumer_details')}")


def finished_ok(wire: Wire, token: str) -> bool:
    return any(
        m.type == "instance-finished" and json.loads(m.body)["reason"] == FINISHED
        for m in wire.notifications.get(token, [])
    )


def in_order(messages: list[Any]) -> bool:
    """Notifications of one instance arrived with rising seq (a re-sent duplicate is ignored)."""
    seen: set[str] = set()
    seqs = []
    for m in messages:
        if m.message_id not in seen:
            seen.add(m.message_id)
            seqs.append(json.loads(m.body)["seq"])
    return seqs == sorted(set(seqs))


def worker_log(container: str) -> list[dict[str, Any]]:
    """The JSON log lines of one worker container."""
    out = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=True)
    lines = []
    for text in (out.stdout + out.stderr).splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


async def test_sigkill_of_a_replica_under_load_loses_and_duplicates_nothing(stack: Stack) -> None:
    """Two replicas, the active one SIGKILLed mid-load: every instance finishes, once, in order."""
    started = time.monotonic()
    workers = stack.containers("worker")
    client = await Wire.open(stack.amqp_url("statusek-client", password("client-secret")))
    subscriber = await Wire.open(stack.amqp_url("statusek-subscriber", password("subscriber-secret")))
    db = await asyncpg.connect(stack.database_url)
    tokens = [str(uuid.uuid4()) for _ in range(INSTANCES)]
    correlations: list[str] = []
    sent = confirmed = 0
    published = asyncio.Event()  # set when KILL_AT instances are confirmed
    pending = iter(tokens)

    async def publish() -> None:
        nonlocal sent, confirmed
        for token in pending:  # the publishers share the iterator
            for routing_key, body in commands(token):
                sent += 1
                # Wire.send returns once the broker confirmed the publish.
                correlations.append(await client.send(routing_key, body, message_id=uuid.uuid4().hex))
                confirmed += 1
            if confirmed >= KILL_AT * 3:
                published.set()

    async def kill() -> tuple[str, float]:
        await published.wait()
        victim = active_worker(stack, workers)
        await asyncio.to_thread(subprocess.run, ["docker", "kill", victim], check=True, capture_output=True)
        return victim, time.monotonic()

    killer = asyncio.create_task(kill())
    try:
        await asyncio.gather(*(publish() for _ in range(PUBLISHERS)))
        killed, killed_at = await killer
        load_seconds = time.monotonic() - started

        def finished() -> set[str]:
            return {t for t in tokens if finished_ok(subscriber, t)}

        for _ in range(240):  # up to 120 s for the takeover and the backlog
            if len(finished()) == len(tokens) and all(c in client.replies for c in correlations):
                break
            await asyncio.sleep(0.5)
        done = finished()
        drained = time.monotonic() - killed_at
        replies = [client.replies.get(c) for c in correlations]
        refused = [r for r in replies if r is not None and not r["status"]]

        rows = await db.fetch(
            "SELECT instance_token, kind, status_name, count(*) AS n FROM events"
            " WHERE instance_token = ANY($1::uuid[]) GROUP BY 1, 2, 3",
            [uuid.UUID(t) for t in tokens],
        )
        duplicated = sum(r["n"] - 1 for r in rows)
        logged = Counter(str(r["instance_token"]) for r in rows)  # distinct (kind, status) per instance
        out_of_order = [t for t in tokens if not in_order(subscriber.notifications.get(t, []))]
        state = stack.inspect(killed, "State")
        survivor_log = [
            line for c in workers if c != killed for line in worker_log(c) if line.get("event") == "command"
        ]
        summary = {
            "sent": sent,
            "confirmed": confirmed,
            "replies": sum(r is not None for r in replies),
            "refused": len(refused),
            "finished": len(done),
            "lost": len(tokens) - len(done),
            "incomplete_logs": sum(logged[t] != 4 for t in tokens),  # created, STARTED, FINISHED, finished
            "duplicated": duplicated,
            "out_of_order": len(out_of_order),
            "notifications": sum(len(subscriber.notifications.get(t, [])) for t in tokens),
            "killed": str(stack.inspect(killed, "Name")).lstrip("/"),
            "killed_state": state["Status"],
            # Deliveries the killed worker held, taken over by the survivor (already applied: by message_id).
            "redelivered": sum(bool(line.get("redelivered")) for line in survivor_log),
            "redelivered_already_applied": sum(bool(line.get("duplicate")) for line in survivor_log),
            "load_s": round(load_seconds, 1),
            "kill_to_all_finished_s": round(drained, 1),
        }
        line = "compose, active replica SIGKILLed: " + json.dumps(summary)
        print(line)
        REPORT_LINES.append(line)

        assert confirmed == sent
        assert summary["lost"] == 0, f"{summary}; not finished: {sorted(set(tokens) - done)[:5]}"
        assert summary["incomplete_logs"] == 0, summary
        assert duplicated == 0, [dict(r) for r in rows if r["n"] > 1][:5]
        assert not out_of_order, out_of_order[:5]
        assert summary["replies"] == sent, summary
        assert not refused, refused[:5]
    finally:
        killer.cancel()
        await db.close()
        await client.close()
        await subscriber.close()
