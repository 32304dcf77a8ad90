"""Fault injection against real RabbitMQ and Postgres, workers as subprocesses.

Each scenario counts every command (sent, confirmed, applied, duplicated,
lost) and every notification, and adds its counts to the report printed at
the end of the test run.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Awaitable
from datetime import datetime

import asyncpg
import pytest

from statusek.adapters.rabbitmq.endpoints import with_heartbeat
from statusek.core.partitions import routing_headers
from statusek.worker.faults import FAULT_HEADER
from statusek.worker.worker import EXIT_UNFINISHED
from tests.helpers import eventually
from tests.integration.conftest import Cluster
from tests.integration.faults import Ledger, Report, create_body, created, proxied

pytestmark = pytest.mark.slow


async def drained(cluster: Cluster, timeout: float = 60) -> dict[str, tuple[int, int]]:
    """Wait until the statistics say the command and query queues hold nothing, ready or unacked.

    Quorum queues refresh those every few seconds: just after a send they can still read
    empty, so wait for what was sent first (`Cluster.messages` counts ready messages now).
    """
    deadline = time.monotonic() + timeout
    while True:
        depths = cluster.queue_depths()
        busy = {
            q: d for q, d in depths.items() if q in ("statusek.commands", "statusek.queries") and d != (0, 0)
        }
        if not busy or time.monotonic() > deadline:
            return depths
        await asyncio.sleep(0.5)


async def test_republished_message_ids_apply_once(cluster: Cluster, cluster_db: asyncpg.Connection) -> None:
    """10% of commands re-published 2-3 times to two replicas: events = distinct commands."""
    cluster.start(2)
    await cluster.wait_for_consumers(2)
    ledger = Ledger(cluster.wire, Report("republished message_id x2-3, two replicas"))
    republished = 0
    for _ in range(500):
        token = str(uuid.uuid4())
        ledger.tokens.append(token)
        for routing_key, body in ledger.commands(token):
            message_id = await ledger.publish(routing_key, body)
            if random.random() < 0.10:
                for _ in range(random.choice((1, 2))):
                    await ledger.publish(routing_key, body, message_id=message_id)
                    republished += 1
    await ledger.wait_replies(timeout=60)
    report = await ledger.audit(cluster_db)
    report.extra["republished"] = republished
    distinct = await cluster_db.fetchval("SELECT count(*) FROM events WHERE kind <> 'finished'")
    assert distinct == 2000
    assert (report.applied, report.duplicated, report.lost, report.notifications_missing) == (2000, 0, 0, 0)


async def test_sigkill_of_replicas_loses_and_doubles_nothing(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """2,000 commands while replicas are SIGKILLed 10 times: 0 lost, 0 duplicated, queues drained."""
    cluster.start(2)
    await cluster.wait_for_consumers(2)
    ledger = Ledger(cluster.wire, Report("SIGKILL x10, two replicas"))
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while kills < 10:
            await asyncio.sleep(random.uniform(0.3, 0.9))
            victim = random.choice(cluster.alive)
            victim.send_signal(signal.SIGKILL)
            kills += 1
            cluster.start(1)

    killing = asyncio.create_task(killer())
    await ledger.run(500, per_second=400)
    await killing
    await ledger.wait_replies(timeout=120)
    depths = await drained(cluster)
    report = await ledger.audit(cluster_db)
    report.extra.update(kills=kills, commands_queue=depths["statusek.commands"])
    assert report.commands_confirmed == 2000
    assert (report.applied, report.duplicated, report.lost, report.notifications_missing) == (2000, 0, 0, 0)
    assert depths["statusek.commands"] == (0, 0) and depths["statusek.dead-letter"] == (0, 0)


# Each crash costs a worker's restart (about 0.8 s on two cores): 40 show what 100 did.
CRASHES = 40


async def test_crash_between_commit_and_ack_is_answered_from_the_record(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """40 deliveries crash their worker after commit: redelivery adds no event, same reply."""
    hooks = {"STATUSEK_FAULT_HOOKS": "true"}
    cluster.start(3, **hooks)
    await cluster.wait_for_consumers(3)
    ledger = Ledger(cluster.wire, Report(f"crash between commit and ack x{CRASHES}"))
    tokens = [str(uuid.uuid4()) for _ in range(CRASHES)]
    for token in tokens:
        reply = await cluster.wire.request(
            "create",
            {
                "object_name": "2-POINT LINE TASK",
                "instance_token": token,
                "instance_timeout": 3600,
                "heartbeat_timeout": 600,
            },
        )
        assert reply["code"] == "SUCCESS"

    async def supervise() -> None:
        while True:
            await asyncio.sleep(0.2)
            missing = 3 - len(cluster.alive)
            if missing > 0:
                cluster.start(missing, **hooks)

    supervisor = asyncio.create_task(supervise())
    replies = {}
    try:
        for i, token in enumerate(tokens):
            # Half pings (never idempotent by themselves), half statuses.
            routing_key, body = (
                ("ping", {"instance_token": token, "message": "crash me"})
                if i % 2 == 0
                else ("set-status", {"instance_token": token, "status_name": "STARTED"})
            )
            message_id = await ledger.publish(routing_key, body, headers={FAULT_HEADER: "crash-after-commit"})
            replies[token] = (routing_key, await cluster.wire.reply(ledger.confirmed[message_id], timeout=60))
    finally:
        supervisor.cancel()
    crashes = sum(1 for p in cluster.workers if p.poll() == 70)
    rows = await cluster_db.fetch(
        "SELECT instance_token, kind, occurred_at FROM events"
        " WHERE instance_token = ANY($1::uuid[]) AND seq > 1",
        [uuid.UUID(t) for t in tokens],
    )
    events: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        events.setdefault(str(r["instance_token"]), []).append(r)
    for token, (routing_key, reply) in replies.items():
        assert reply["code"] == "SUCCESS", reply
        assert len(events[token]) == 1, events[token]
        if routing_key == "ping":
            # The stored reply: the deadline computed when the one ping event was written.
            deadline = events[token][0]["occurred_at"].timestamp() + 600
            assert datetime.fromisoformat(reply["data"]["deadline"]).timestamp() == pytest.approx(
                deadline, abs=1e-3
            )
    ledger.report.applied = len(rows)
    ledger.report.duplicated = len(rows) - len(tokens)
    ledger.report.replies = len(replies)
    ledger.report.extra["crashes"] = crashes
    from tests.integration.faults import REPORTS

    REPORTS.append(ledger.report)
    # The hook crashes where a window decided the command, so a delivery a hand-over gave back
    # unprocessed still crashes once, with any number of partitions.
    assert crashes == CRASHES
    assert len(rows) == CRASHES


async def test_sigterm_under_load_drains_in_time(cluster: Cluster, cluster_db: asyncpg.Connection) -> None:
    """SIGTERM mid-load: the worker exits within 10 s, nothing lost, nothing redelivered."""
    first = cluster.start(1)[0]
    await cluster.wait_for_consumers(1)
    cluster.start(1)
    await cluster.wait_for_consumers(2)
    ledger = Ledger(cluster.wire, Report("SIGTERM under load"))
    loading = asyncio.create_task(ledger.run(400, per_second=500))
    await asyncio.sleep(1.5)
    first.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.to_thread(first.wait, 15)
    drain_seconds = time.monotonic() - signalled
    await loading
    await ledger.wait_replies(timeout=60)
    depths = await drained(cluster)
    report = await ledger.audit(cluster_db)
    lines = cluster.log_lines()
    redelivered = sum(1 for line in lines if line.get("event") == "command" and line.get("redelivered"))
    report.extra.update(
        drain_seconds=round(drain_seconds, 2), exit_code=first.returncode, redelivered=redelivered
    )
    assert first.returncode == 0 and drain_seconds < 10
    assert (report.applied, report.duplicated, report.lost) == (1600, 0, 0)
    assert depths["statusek.commands"] == (0, 0)


async def test_a_second_sigterm_exits_at_once_and_loses_nothing(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """SIGTERM twice while a window stalls under load: the worker leaves without its drain, as a
    crash; a replica started after it applies every command once."""
    first = cluster.start(1, STATUSEK_FAULT_HOOKS="true")[0]
    await cluster.wait_for_consumers(1)
    ledger = Ledger(cluster.wire, Report("second SIGTERM under load"))
    loading = asyncio.create_task(ledger.run(400, per_second=500))
    await asyncio.sleep(1.0)
    token = str(uuid.uuid4())
    body = {"object_name": "2-POINT LINE TASK", "instance_token": token}
    stalled = await cluster.wire.send(
        "create",
        body,
        message_id=uuid.uuid4().hex,
        headers={**routing_headers(body), FAULT_HEADER: "stall-before-commit"},
    )

    def stalling() -> bool:
        return any(line.get("event") == "fault hook: stalling before commit" for line in cluster.log_lines())

    await eventually(stalling, 10)
    # The drain now waits for that window (1.5 s): the second signal comes well inside it.
    first.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.wait, 15)
    cluster.start(1)
    await loading
    await ledger.wait_replies(timeout=60)
    reply = await cluster.wire.reply(stalled, timeout=30)
    report = await ledger.audit(cluster_db)
    events = [line.get("event") for line in cluster.log_lines() if line.get("pid") == first.pid]
    report.extra.update(exit_code=first.returncode)
    assert first.returncode == EXIT_UNFINISHED
    assert "second stop signal: exiting without finishing in-flight work" in events
    assert "worker stopped" not in events
    assert (report.applied, report.duplicated, report.lost) == (1600, 0, 0)
    assert reply["code"] == "SUCCESS"
    assert (
        await cluster_db.fetchval("SELECT count(*) FROM instances WHERE token = $1::uuid", uuid.UUID(token))
        == 1
    )


async def test_hostile_payloads_are_dead_lettered_with_flat_memory(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """10,000 hostile bodies: each dead-lettered, no event, worker memory flat."""
    worker = cluster.start(1)[0]
    await cluster.wait_for_consumers(1)
    token = str(uuid.uuid4())
    payloads = [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"instance_token": "' + token.encode() + b'", "code": ' + b"9" * 5_000 + b"}",
        b'{"object_name": "' + b"x" * 60_000 + b'"}',
        b'{"object_name": "A", "labels": {' + b",".join(b'"k%d": "v"' % i for i in range(40)) + b"}}",
    ]
    huge = b'{"object_name": "' + b"x" * 1_000_000 + b'"}'
    keys = ["create", "ping", "create", "create"]

    def rss_kib() -> int:
        with open(f"/proc/{worker.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    async def send(count: int) -> None:
        for i in range(count):
            if i % 100 == 0:
                await cluster.wire.send("create", huge, reply=False)
            else:
                await cluster.wire.send(keys[i % 4], payloads[i % 4], reply=False)

    def dead_lettered() -> Awaitable[int]:
        # Asked of the queue: `drained` reads statistics that can still say "empty" just after
        # the send, and memory measured mid-flight would count the bodies in flight.
        return cluster.messages("statusek.dead-letter")

    await send(1_000)
    await eventually(dead_lettered, 60, equals=1_000)
    before = rss_kib()
    await send(9_000)
    await eventually(dead_lettered, 120, equals=10_000)
    await drained(cluster)
    after = rss_kib()
    dead = await dead_lettered()
    events = await cluster_db.fetchval("SELECT count(*) FROM events")
    report = Report("hostile payloads x10,000")
    report.commands_sent = report.commands_confirmed = 10_000
    report.extra.update(
        dead_lettered=dead,
        events=events,
        rss_kib_after_1k=before,
        rss_kib_after_10k=after,
    )
    from tests.integration.faults import REPORTS

    REPORTS.append(report)
    assert dead == 10_000
    assert events == 0
    # Flat means no growth with the count: keeping one body in five of the 9,000 (of about
    # 280 MB sent) would add 56 MB. The allocator's and buffers' high-water mark still rises
    # once, by up to 24 MB seen, somewhere in the first 10,000, and stays there (30,000 sent).
    assert after - before < 40 * 1024, f"worker grew by {after - before} KiB"


async def test_postgres_outages_under_load(cluster: Cluster, cluster_db: asyncpg.Connection) -> None:
    """Postgres unreachable three times for longer than the worker's bounds: nothing dead-lettered,
    all applied within 10 s."""
    proxy, db_url = await proxied(cluster.env["STATUSEK_DATABASE_URL"], 5432)
    # The bounds are scaled down (defaults 10 s) so that an 8 s outage outlasts them, as a 20 s
    # outage outlasts the defaults: statements time out and the worker stalls in every outage.
    cluster.start(
        1,
        STATUSEK_DATABASE_URL=db_url,
        STATUSEK_RETRY_BACKOFF_MAX="1",
        STATUSEK_DATABASE_STATEMENT_TIMEOUT="3",
        STATUSEK_DATABASE_STALL_TIMEOUT="3",
        STATUSEK_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT="3",
    )
    await cluster.wait_for_consumers(1)
    ledger = Ledger(cluster.wire, Report("postgres down 8 s x3, bounds 3 s"))
    # 50 commands/s for 36 s: the load lasts through all three outages (about 34 s) and no longer.
    loading = asyncio.create_task(ledger.run(450, per_second=50))
    recoveries = []
    try:
        for _ in range(3):
            await asyncio.sleep(3)
            proxy.block()
            await asyncio.sleep(8)
            proxy.unblock()
            recovered = time.monotonic()
            pending = list(ledger.confirmed.values())
            for correlation_id in pending:
                await cluster.wire.reply(correlation_id, timeout=30)
            recoveries.append(round(time.monotonic() - recovered, 2))
        await loading
        await ledger.wait_replies(timeout=60)
    finally:
        await proxy.close()
    depths = await drained(cluster)
    report = await ledger.audit(cluster_db)
    report.extra.update(applied_after_recovery_s=recoveries, dead_lettered=depths["statusek.dead-letter"][0])
    assert depths["statusek.dead-letter"] == (0, 0)
    assert all(r < 10 for r in recoveries), recoveries
    assert (report.duplicated, report.lost, report.notifications_missing) == (0, 0, 0)


async def test_broker_link_cut_under_load(cluster: Cluster, cluster_db: asyncpg.Connection) -> None:
    """The worker's broker connection is cut twice: consumers resume, nothing lost, no seq missing."""
    proxy, amqp_url = await proxied(cluster.env["STATUSEK_AMQP_URL"], 5672)
    cluster.start(1, STATUSEK_AMQP_URL=amqp_url)
    await cluster.wait_for_consumers(1)
    ledger = Ledger(cluster.wire, Report("broker link cut x2"))
    loading = asyncio.create_task(ledger.run(400, per_second=150))
    resumed = []
    try:
        for _ in range(2):
            await asyncio.sleep(2)
            proxy.block()
            await asyncio.sleep(3)
            proxy.unblock()
            unblocked = time.monotonic()
            await cluster.wait_for_consumers(1, timeout=30)
            resumed.append(round(time.monotonic() - unblocked, 2))
        await loading
        await ledger.wait_replies(timeout=60)
        # Through the link still: the last command's ack leaves after its reply has arrived here,
        # and closing the proxy first would cut it off and leave that command in the queue.
        depths = await drained(cluster)
    finally:
        await proxy.close()
    report = await ledger.audit(cluster_db)
    report.extra["consumers_resumed_after_s"] = resumed
    assert all(r < 15 for r in resumed), resumed
    assert (report.duplicated, report.lost, report.notifications_missing) == (0, 0, 0)
    assert depths["statusek.commands"] == (0, 0)


async def test_broker_link_black_holed_under_load(cluster: Cluster, cluster_db: asyncpg.Connection) -> None:
    """The worker's broker link goes silent past its heartbeat: it reconnects, nothing lost or doubled."""
    proxy, amqp_url = await proxied(cluster.env["STATUSEK_AMQP_URL"], 5672)
    # A 1 s heartbeat: aiormq gives a silent link up after about 6 s, and it does so by cancelling
    # its reader, so whatever waits on that connection (a confirm, an ack) sees a CancelledError.
    cluster.start(1, STATUSEK_AMQP_URL=with_heartbeat(amqp_url, 1))
    await cluster.wait_for_consumers(1)
    ledger = Ledger(cluster.wire, Report("broker link black-holed"))
    loading = asyncio.create_task(ledger.run(300, per_second=100))
    try:
        await asyncio.sleep(1)
        proxy.stall()
        await asyncio.sleep(9)
        proxy.cut()  # the stalled link ends; the worker's new one flows
        proxy.resume()
        await cluster.wait_for_consumers(1, timeout=30)
        await loading
        await ledger.wait_replies(timeout=60)
        depths = await drained(cluster)
    finally:
        await proxy.close()
    report = await ledger.audit(cluster_db)
    assert cluster.workers[0].poll() is None, "the worker exited"
    assert (report.duplicated, report.lost, report.notifications_missing) == (0, 0, 0)
    assert depths["statusek.commands"] == (0, 0)


async def test_the_worker_asks_for_the_heartbeat_setting(cluster: Cluster) -> None:
    """Its broker connections run with STATUSEK_AMQP_HEARTBEAT (10 s by default), not aiormq's 60 s."""
    cluster.start(1)
    await cluster.wait_for_consumers(1)
    out = cluster.rabbit.rabbitmqctl(
        "list_connections", "vhost", "timeout", "client_properties", "--no-table-headers"
    )
    workers = [
        line.split("\t") for line in out.splitlines() if '"statusek worker ' in line and cluster.vhost in line
    ]
    assert workers, out
    assert {(vhost, timeout) for vhost, timeout, _ in workers} == {(cluster.vhost, "10")}


async def test_the_standby_applies_what_a_black_holed_worker_holds(
    cluster: Cluster, cluster_db: asyncpg.Connection
) -> None:
    """The active worker's broker link black-holed: its standby applies 20 creates, once each, in 60 s."""
    proxy, amqp_url = await proxied(cluster.env["STATUSEK_AMQP_URL"], 5672)
    try:
        cluster.start(1, STATUSEK_AMQP_URL=amqp_url)  # the default heartbeat (10 s)
        await cluster.wait_for_consumers(1)
        cluster.start(1)
        await cluster.wait_for_consumers(2)
        proxy.stall()
        stalled = time.monotonic()
        tokens = [str(uuid.uuid4()) for _ in range(20)]
        correlation_ids = [
            await cluster.wire.send("create", create_body(t), message_id=uuid.uuid4().hex) for t in tokens
        ]
        await eventually(lambda: created(cluster_db, tokens), 60, equals=20)
        print(f"the standby applied 20 creates {time.monotonic() - stalled:.1f} s into the black hole")
        replies = [await cluster.wire.reply(c, timeout=10) for c in correlation_ids]
    finally:
        await proxy.close()
    assert [r["code"] for r in replies] == ["SUCCESS"] * 20
    events = await cluster_db.fetchval(
        "SELECT count(*) FROM events WHERE kind = 'created' AND instance_token = ANY($1::uuid[])",
        [uuid.UUID(t) for t in tokens],
    )
    assert events == 20
