"""The ops interface of a worker process: probes, metrics, limits, identity."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from statusek.adapters.rabbitmq.broker import ORIGINAL_SIZE_HEADER, TRUNCATED_HEADER, Names
from statusek.identity import version
from statusek.testing import free_port
from tests.helpers import command_partitions, eventually, ops_get, wait_status
from tests.integration.conftest import Cluster
from tests.integration.faults import proxied
from tests.integration.wire import Wire
from tests.log_secrets import with_password

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = await ops_get(port, "/metrics")
    assert code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def start_worker(cluster: Cluster, **env: str) -> int:
    port = free_port()
    cluster.start(1, STATUSEK_OPS_PORT=str(port), **env)
    return port


async def test_livez_answers_while_the_loop_runs(cluster: Cluster) -> None:
    """/livez is 200 as soon as the worker process is up."""
    port = start_worker(cluster)
    await wait_status(port, 200, timeout=30)
    assert await ops_get(port, "/livez") == (200, b'{"status": "ok"}\n')


async def test_readyz_names_what_is_missing(cluster: Cluster) -> None:
    """A worker that cannot log in to RabbitMQ is not ready, and /readyz says why."""
    wrong = with_password(cluster.env["STATUSEK_AMQP_URL"], "not-the-password")
    port = start_worker(cluster, STATUSEK_AMQP_URL=wrong)
    _, body = await wait_status(port, 503, timeout=30)
    deadline = time.monotonic() + 20
    while "rabbitmq" not in json.loads(body)["problems"] or "password" not in body.decode():
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
        _, body = await ops_get(port, "/readyz")
    assert "not-the-password" not in body.decode()


async def outage(cluster: Cluster, dependency: str, setting: str, default_port: int, down_for: float) -> int:
    """Cut `dependency` for `down_for` s under a worker; /readyz must follow within 5 s each way.

    Returns the worker's ops port, for what the test checks afterwards.
    """
    proxy, url = await proxied(cluster.env[setting], default_port)
    try:
        port = start_worker(cluster, **{setting: url})
        await wait_status(port, 200, timeout=30)
        proxy.block()
        down, body = await wait_status(port, 503, timeout=5)
        assert dependency in json.loads(body)["problems"]
        await asyncio.sleep(down_for)
        proxy.unblock()
        up, _ = await wait_status(port, 200, timeout=5)
        print(f"{dependency}: 503 after {down:.2f} s, 200 again after {up:.2f} s")
        return port
    finally:
        await proxy.close()


async def test_readyz_follows_postgres(cluster: Cluster) -> None:
    """/readyz turns 503 within 5 s of Postgres going away and 200 within 5 s of its return."""
    await outage(cluster, "postgres", "STATUSEK_DATABASE_URL", 5432, down_for=3)


async def test_readyz_follows_rabbitmq(cluster: Cluster) -> None:
    """/readyz turns 503 within 5 s of RabbitMQ going away and 200 within 5 s of its return."""
    # 10 s: long enough for the reconnect backoff to reach its cap.
    port = await outage(cluster, "rabbitmq", "STATUSEK_AMQP_URL", 5672, down_for=10)
    figures = await metrics(port)
    assert figures[("statusek_reconnects_total", (("dependency", "rabbitmq"),))] >= 1


async def test_metrics_move_with_the_commands_sent(cluster: Cluster) -> None:
    """Counters and histograms on /metrics count exactly the commands answered."""
    port = start_worker(cluster)
    await wait_status(port, 200, timeout=30)
    tokens = [str(uuid.uuid4()) for _ in range(20)]
    for token in tokens:
        reply = await cluster.wire.request(
            "create", {"object_name": "2-POINT LINE TASK", "instance_token": token}
        )
        assert reply["status"] is True
    for token in tokens[:5]:
        reply = await cluster.wire.request("set-status", {"instance_token": token, "status_name": "FINISHED"})
        assert reply["code"] == "NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET"
    await cluster.wire.request("create", b"{not json")
    await cluster.wire.query("is-finished", {"instance_token": tokens[0]})

    figures = await metrics(port)
    assert figures[("statusek_commands_total", (("code", "SUCCESS"), ("routing_key", "create")))] == 20
    rejected = (("code", "NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET"), ("routing_key", "set-status"))
    assert figures[("statusek_commands_total", rejected)] == 5
    assert figures[("statusek_dead_lettered_total", (("reason", "invalid-json"),))] == 1
    assert figures[("statusek_queries_total", (("code", "SUCCESS"), ("routing_key", "is-finished")))] == 1
    assert figures[("statusek_command_duration_seconds_count", ())] == 25
    assert figures[("statusek_window_size_sum", ())] == 26
    assert figures[("statusek_window_stage_seconds_count", (("stage", "queued"),))] == 26
    windows = figures[("statusek_window_size_count", ())]
    for stage in ("apply", "answer", "ack"):
        assert figures[("statusek_window_stage_seconds_count", (("stage", stage),))] == windows
    heads = {labels: v for (name, labels), v in figures.items() if name == "statusek_active_consumer"}
    # A series per command queue from the start; the only replica heads every queue delivered to.
    assert len(heads) == command_partitions() and set(heads.values()) <= {0, 1} and sum(heads.values()) >= 1
    assert figures[("statusek_ready", ())] == 1
    assert figures[("statusek_queue_messages", (("queue", "statusek.dead-letter"),))] == 1


async def test_poison_commands_end_in_dead_letter_after_the_delivery_limit(cluster: Cluster) -> None:
    """50 commands failing their window every time are dead-lettered by the broker; the worker stays ready."""
    port = start_worker(cluster, STATUSEK_FAULT_HOOKS="true")
    await wait_status(port, 200, timeout=30)
    poison = [uuid.uuid4().hex for _ in range(50)]
    for message_id in poison:
        await cluster.wire.send(
            "create",
            {"object_name": "2-POINT LINE TASK"},
            reply=False,
            message_id=message_id,
            headers={"x-statusek-test-fault": "fail-window"},
        )
    deaths: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while len(deaths) < len(poison):
        assert time.monotonic() < deadline, f"{len(deaths)} of {len(poison)} dead-lettered"
        code, _ = await ops_get(port, "/readyz")
        assert code == 200
        message = await cluster.wire.parked("statusek.dead-letter", poison[len(deaths)], timeout=60)
        deaths[message.message_id or ""] = (message.headers or {})["x-death"]
    for x_death in deaths.values():
        assert x_death[0]["reason"] == "delivery_limit"
        assert x_death[0]["queue"] in Names(partitions=command_partitions()).command_queues
    figures = await metrics(port)
    assert figures[("statusek_dead_lettered_total", (("reason", "delivery-limit"),))] == 50
    assert (await ops_get(port, "/readyz"))[0] == 200


async def test_dead_letter_copies_are_timestamped_sized_and_cut(wire: Wire) -> None:
    """A 1 MB refused body is kept as its first 64 KiB, with its size and a timestamp."""
    message_id = uuid.uuid4().hex
    await wire.send("create", b"x" * 1_000_000, reply=False, message_id=message_id)
    copy = await wire.parked("statusek.dead-letter", message_id)
    headers = copy.headers or {}
    assert headers["x-statusek-reason"] == "too-large"
    assert headers[ORIGINAL_SIZE_HEADER] == 1_000_000
    assert headers[TRUNCATED_HEADER] is True
    assert len(copy.body) == 64 * 1024
    assert copy.timestamp is not None


async def test_connection_names_tell_replicas_apart(cluster: Cluster) -> None:
    """Each replica's connection reads `statusek worker host:pid` in the management UI."""
    procs = cluster.start(2)
    await cluster.wait_for_consumers(2)
    out = cluster.rabbit.rabbitmqctl(
        "list_connections", "-p", cluster.vhost, "client_properties", "--formatter", "json"
    )
    names = {
        dict((k, v) for k, _, v in c["client_properties"]).get("connection_name") for c in json.loads(out)
    }
    host = socket.gethostname()
    assert {f"statusek worker {host}:{p.pid}" for p in procs} <= names


async def test_log_lines_carry_identity_and_no_password(cluster: Cluster) -> None:
    """Every worker log line names host, pid, version, vhost and broker, and never the password."""
    wrong = with_password(cluster.env["STATUSEK_AMQP_URL"], "hunter2-secret")
    port = start_worker(cluster, STATUSEK_AMQP_URL=wrong)
    await wait_status(port, 503, timeout=30)
    await asyncio.sleep(3)
    cluster.stop()
    lines = cluster.log_lines()
    assert lines
    for line in lines:
        assert {"host", "pid", "version", "vhost", "broker"} <= line.keys(), line
        assert line["vhost"] == cluster.vhost
    text = "\n".join(p.read_text() for p in cluster.logs.glob("worker-*.log"))
    assert "hunter2-secret" not in text
    assert "waiting for rabbitmq" in text


async def test_a_queue_declared_with_other_limits_is_kept(cluster: Cluster) -> None:
    """A command queue declared earlier with other limits is used as it is, with a warning naming the fix."""
    port = start_worker(cluster, STATUSEK_COMMAND_DELIVERY_LIMIT="7")
    await wait_status(port, 200, timeout=30)
    cluster.stop()
    warnings = [
        line for line in cluster.log_lines() if str(line["event"]).startswith("queue exists with other")
    ]
    # The fixture declared every partition with the default limit.
    assert [w["queue"] for w in warnings] == Names(partitions=command_partitions()).command_queues
    assert "definitions.json" in str(warnings[0]["fix"])


async def test_health_exits_0_for_a_ready_worker_and_1_otherwise(cluster: Cluster) -> None:
    """`statusek health` (the container HEALTHCHECK) follows /readyz and prints why when not ready."""
    port = start_worker(cluster)
    env = {**cluster.env, "STATUSEK_OPS_PORT": str(port)}

    def health(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "statusek", "health"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=30,
        )

    await wait_status(port, 200, timeout=30)
    ready = await asyncio.to_thread(health)
    assert (ready.returncode, ready.stdout.split()[0]) == (0, "ready")
    nobody = await asyncio.to_thread(health, STATUSEK_OPS_PORT=str(free_port()))
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("not ready: no worker answers at http://127.0.0.1:")


async def test_a_second_worker_on_a_taken_ops_port_exits_with_one_line(cluster: Cluster) -> None:
    """A worker whose ops port another worker holds exits 1 with one line naming the port and the setting."""
    port = start_worker(cluster)
    await wait_status(port, 200, timeout=30)
    second = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "statusek", "worker"],
        env={**cluster.env, "STATUSEK_OPS_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stderr
    assert second.stderr.splitlines() == [
        f"statusek worker: the ops server cannot listen on 0.0.0.0:{port} (STATUSEK_OPS_PORT): "
        "address already in use: another worker on this host? give each worker its own "
        "STATUSEK_OPS_PORT, or 0 to run it without the ops server"
    ]
    assert (await ops_get(port, "/readyz"))[0] == 200  # the first worker serves on


async def test_version_prints_the_package_version() -> None:
    """`statusek --version` prints the installed version."""
    out = subprocess.run([sys.executable, "-m", "statusek", "--version"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, f"statusek {version()}\n")


async def test_a_worker_process_rarely_collects_garbage(cluster: Cluster) -> None:
    """500 creates cost a `statusek worker` at most two young collections (CPython's defaults: six)."""
    port = start_worker(cluster)
    await wait_status(port, 200, timeout=30)
    young = ("python_gc_collections_total", (("generation", "0"),))
    before = (await metrics(port))[young]
    for _ in range(500):
        reply = await cluster.wire.request(
            "create", {"object_name": "2-POINT LINE TASK", "instance_token": str(uuid.uuid4())}
        )
        assert reply["status"] is True
    assert (await metrics(port))[young] - before <= 2


async def test_a_worker_frees_refused_commands_without_the_garbage_collector(cluster: Cluster) -> None:
    """2,000 malformed commands leave a worker fewer than 2,000 objects for the collector to free."""
    port = start_worker(cluster)
    await wait_status(port, 200, timeout=30)
    bodies = [
        b"[" * 1_000 + b"]" * 1_000,
        b'{"object_name": "' + b"x" * 60_000 + b'"}',
        b'{"object_name": "A", "instance_timeout": "soon"}',
    ]

    async def collected() -> float:
        return sum(
            v for (name, _), v in (await metrics(port)).items() if name == "python_gc_objects_collected_total"
        )

    async def dead_lettered() -> int:
        return await cluster.messages("statusek.dead-letter")

    before = await collected()
    for i in range(2_000):
        await cluster.wire.send("create", bodies[i % 3], reply=False)
    await eventually(dead_lettered, 60, equals=2_000)
    # Each refusal kept with its traceback was a cycle of about 20 objects, bodies included.
    assert await collected() - before < 2_000


async def test_a_deleted_holding_queue_is_declared_again_and_counted(cluster: Cluster) -> None:
    """A rejection parked after statusek.rejected was deleted lands in it again, and /metrics counts it."""
    port = start_worker(cluster)
    await wait_status(port, 200, timeout=30)
    redeclared = ("statusek_holding_queues_redeclared_total", (("queue", "statusek.rejected"),))
    assert (await metrics(port))[redeclared] == 0
    await cluster.wire.channel.queue_delete("statusek.rejected")
    message_id = uuid.uuid4().hex
    body = {"instance_token": str(uuid.uuid4()), "status_name": "STARTED"}
    # No reply_to: the rejection is parked in statusek.rejected.
    await cluster.wire.send("set-status", body, reply=False, message_id=message_id)

    async def counted() -> float:
        return (await metrics(port))[redeclared]

    # Counted once the copy is in the queue declared again; until then there is no queue to look into.
    await eventually(counted, 10, equals=1, what="the holding queue declared again")
    copy = await cluster.wire.parked("statusek.rejected", message_id)
    assert copy.headers["x-statusek-code"] == "INSTANCE_TOKEN_IS_NOT_FOUND"
