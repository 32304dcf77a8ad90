"""Each CLI subcommand run as a subprocess against the running worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlsplit

import pytest

from statusek.worker.worker import Worker
from tests.helpers import statusek


@pytest.fixture
def env(worker: Worker, worker_env: dict[str, str]) -> dict[str, str]:
    return worker_env


async def test_create_prints_the_token(env: dict[str, str]) -> None:
    """`create` prints the new token, or JSON with --json."""
    token = str(uuid.uuid4())
    human = await statusek(env, "create", "2-POINT LINE TASK", "--token", token, "--label", "team=ops")
    assert (human.returncode, human.stdout.strip()) == (0, token)
    again = await statusek(
        env, "create", "2-POINT LINE TASK", "--token", token, "--label", "team=ops", "--json"
    )
    assert json.loads(again.stdout) == {"instance_token": token, "created": False}


async def test_set_ping_and_show(env: dict[str, str]) -> None:
    """`set` and `ping` act; `show` prints the instance and its events as a table."""
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    assert (
        await statusek(env, "set", token, "STARTED", "--message", "go")
    ).stdout.strip() == "STARTED is set"
    ping = await statusek(env, "ping", token, "--message", "page 3 of 9", "--json")
    assert json.loads(ping.stdout)["deadline"]
    shown = await statusek(env, "show", token)
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[0] == f"instance   {token}"
    assert "statuses   STARTED" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("SEQ"))
    assert lines[header].split() == ["SEQ", "KIND", "STATUS", "TYPE", "MESSAGE", "BY", "AT"]
    user = urlsplit(env["STATUSEK_AMQP_URL"]).username
    assert lines[header + 2].split()[:6] == ["2", "status", "STARTED", "MANDATORY", "go", user]
    assert "page 3 of 9" in lines[header + 3]
    as_json = json.loads((await statusek(env, "show", token, "--json")).stdout)
    assert [e["kind"] for e in as_json["events"]] == ["created", "status", "ping"]


async def test_refusal_exits_1_with_the_code(env: dict[str, str]) -> None:
    """A rule rejection exits 1 and names the code on stderr."""
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    result = await statusek(env, "set", token, "FINISHED")
    assert result.returncode == 1
    assert "NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET" in result.stderr


async def test_cancel_then_wait_exits_4_with_the_reason(env: dict[str, str]) -> None:
    """`wait` prints the reason; a finish other than completion exits 4."""
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    assert (await statusek(env, "cancel", token, "--reason", "no")).returncode == 0
    waited = await statusek(env, "wait", token, "--timeout", "5")
    assert (waited.returncode, waited.stdout.strip()) == (4, "CANCELLED")


async def test_wait_exits_0_when_completed(env: dict[str, str]) -> None:
    """`wait` returns as soon as the instance completes."""
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    waiter = asyncio.create_task(statusek(env, "wait", token, "--timeout", "20", "--json"))
    await asyncio.sleep(1.5)
    await statusek(env, "set", token, "STARTED")
    await statusek(env, "set", token, "FINISHED")
    waited = await waiter
    assert waited.returncode == 0
    assert json.loads(waited.stdout) == {"instance_token": token, "reason": "ALL_MANDATORY_STATUSES_ARE_SET"}


async def test_wait_times_out_with_exit_5(env: dict[str, str]) -> None:
    """No finish within --timeout exits 5, saying the instance is still open."""
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    waited = await statusek(env, "wait", token, "--timeout", "0.5")
    assert (waited.returncode, waited.stderr) == (
        5,
        f"statusek: instance {token} is still open after 0.5 s: wait longer with --timeout\n",
    )


async def test_watch_tails_filtered_notifications(env: dict[str, str]) -> None:
    """`watch --token T --count 3` prints that instance's notifications, one per line."""
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    watcher = asyncio.create_task(statusek(env, "watch", "--token", token, "--count", "3"))
    await asyncio.sleep(1.5)
    await statusek(env, "set", token, "STARTED")
    await statusek(env, "set", token, "FINISHED")
    lines = (await watcher).stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["status-changed", "status-changed", "instance-finished"]
    assert lines[2].split()[3] == "ALL_MANDATORY_STATUSES_ARE_SET"


async def test_graph_of_a_model_and_of_an_instance(env: dict[str, str]) -> None:
    """`graph` draws a shipped model, and an instance with its set statuses marked."""
    model = await statusek(env, "graph", "DATA EXPORT", "--format", "dot")
    assert model.returncode == 0 and model.stdout.startswith('digraph "DATA EXPORT"')
    token = (await statusek(env, "create", "2-POINT LINE TASK")).stdout.strip()
    await statusek(env, "set", token, "STARTED")
    drawn = await statusek(env, "graph", "--instance", token)
    assert drawn.returncode == 0
    assert "STARTED ✔" in drawn.stdout and "class s0 set" in drawn.stdout


async def test_unreachable_broker_exits_69(env: dict[str, str]) -> None:
    """A broker that does not answer gives exit code 69 and says where it looked."""
    broken = {**env, "STATUSEK_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}
    result = await statusek(broken, "show", str(uuid.uuid4()))
    assert result.returncode == 69 and result.stderr.startswith("statusek: cannot reach RabbitMQ")


async def test_models_check_reports_errors(env: dict[str, str], tmp_path: object) -> None:
    """`models check` prints each problem and exits 1."""
    from pathlib import Path

    bad = Path(str(tmp_path)) / "bad.yaml"
    bad.write_text("object_name: X\nstatuses:\n  - {name: A, type: MANDATORY, after: [B]}\n")
    result = await statusek(env, "models", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: model 'X': statuses[0].after: unknown status 'B'" in result.stdout


async def test_invalid_setting_names_the_variable(env: dict[str, str]) -> None:
    """A bad setting stops the command with a message naming the variable."""
    result = await statusek({**env, "STATUSEK_WINDOW": "0"}, "models", "check")
    assert result.returncode == 2
    assert result.stderr.startswith("statusek: invalid settings: STATUSEK_WINDOW")
    assert result.stderr.count("\n") == 1


async def test_worker_refuses_invalid_models(env: dict[str, str], tmp_path: object) -> None:
    """The worker does not start on a broken model file, and says which."""
    from pathlib import Path

    bad = Path(str(tmp_path)) / "cyclic.yaml"
    bad.write_text(
        "object_name: C\nstatuses:\n  - {name: A, type: MANDATORY, after: [B]}\n"
        "  - {name: B, type: MANDATORY, after: [A]}\n"
    )
    result = await statusek({**env, "STATUSEK_MODELS_PATH": str(bad)}, "worker", timeout=60)
    assert result.returncode == 1
    assert "cycle" in result.stderr and str(bad) in result.stderr
