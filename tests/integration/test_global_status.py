"""Global statuses (set-global-status, get-global-events, global-status) through a running worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from statusek.client import Client, InvalidRequest
from statusek.worker.worker import Worker
from tests.helpers import statusek
from tests.integration.wire import Wire


def unique(prefix: str = "DEPLOYED") -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


async def global_events(wire: Wire, name: str, **paging: object) -> dict[str, Any]:
    reply = await wire.query("get-global-events", {"status_name": name, **paging})
    assert reply["code"] == "SUCCESS", reply
    data: dict[str, Any] = reply["data"]
    return data


async def announced(wire: Wire, name: str, timeout: float = 10) -> AbstractIncomingMessage:
    """The global-status notification of `name` (the wire files them under "global")."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for message in wire.notifications["global"]:
            if json.loads(message.body)["status_name"] == name:
                return message
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no global-status notification for {name!r}")


async def test_a_repeated_message_id_is_applied_once(wire: Wire) -> None:
    """The same message_id twice: one event, the stored reply again."""
    name, message_id = unique(), uuid.uuid4().hex
    body = {"status_name": name, "status_message": "v2.3"}
    first = await wire.request("set-global-status", body, message_id=message_id)
    again = await wire.request("set-global-status", body, message_id=message_id)
    assert first == again and (first["code"], first["data"]) == ("SUCCESS", {})
    events = (await global_events(wire, name))["events"]
    assert [(e["status_name"], e["message"]) for e in events] == [(name, "v2.3")]


async def test_the_notification_is_published(wire: Wire, amqp_url: str) -> None:
    """global-status on statusek.events: message_id global:<seq>, header status_name, the actor."""
    name, user = unique(), unquote(urlsplit(amqp_url).username or "guest")
    await wire.request("set-global-status", {"status_name": name}, user_id=user)
    [event] = (await global_events(wire, name))["events"]
    message = await announced(wire, name)
    assert (message.type, message.message_id, message.headers) == (
        "global-status",
        f"global:{event['seq']}",
        {"status_name": name},
    )
    assert message.delivery_mode == 2 and message.content_type == "application/json"
    body = json.loads(message.body)
    assert body == {
        "seq": event["seq"],
        "status_name": name,
        "status_message": None,
        "occurred_at": event["occurred_at"],
        "actor": user,
    }


async def test_pages_follow_one_another_without_gaps(wire: Wire) -> None:
    """Five events read two at a time: three pages, seqs rising, no repeats, the last with no next."""
    name = unique("NIGHTLY")
    for i in range(5):
        await wire.request("set-global-status", {"status_name": name, "status_message": f"run {i}"})
    pages, after = [], 0
    while True:
        data = await global_events(wire, name, after_seq=after, limit=2)
        pages.append([e["message"] for e in data["events"]])
        seqs = [e["seq"] for e in data["events"]]
        assert all(s > after for s in seqs) and seqs == sorted(seqs)
        if data["next_after_seq"] is None:
            break
        assert data["next_after_seq"] == seqs[-1]
        after = seqs[-1]
    assert pages == [["run 0", "run 1"], ["run 2", "run 3"], ["run 4"]]


async def test_seqs_are_contiguous_across_names(wire: Wire) -> None:
    """The log of every name together is numbered without gaps."""
    before = (await wire.query("get-global-events", {"limit": 10_000}))["data"]
    first, second = unique("A"), unique("B")
    for name in (first, second, first):
        await wire.request("set-global-status", {"status_name": name})
    after = before["events"][-1]["seq"] if before["events"] else 0
    data = (await wire.query("get-global-events", {"after_seq": after}))["data"]
    assert [e["seq"] for e in data["events"]] == [after + 1, after + 2, after + 3]
    assert [e["status_name"] for e in data["events"]] == [first, second, first]


@pytest.mark.parametrize(
    ("routing_key", "body", "field"),
    [
        ("get-global-events", {"limit": 10_001}, "limit"),
        ("get-global-events", {"after_seq": -1}, "after_seq"),
        ("get-events", {"instance_token": str(uuid.uuid4()), "limit": 10_001}, "limit"),
        ("find-instances", {"limit": 1001}, "limit"),
    ],
)
async def test_a_page_bigger_than_allowed_is_invalid(
    wire: Wire, routing_key: str, body: dict[str, object], field: str
) -> None:
    """A limit over the maximum is INVALID_MESSAGE naming the field, and dead-lettered."""
    message_id = uuid.uuid4().hex
    reply = await wire.request(routing_key, body, exchange="statusek.queries", message_id=message_id)
    assert reply["code"] == "INVALID_MESSAGE" and field in reply["message"]
    parked = await wire.parked("statusek.dead-letter", message_id)
    assert parked.headers["x-statusek-reason"] == "schema-violation"


async def test_set_global_status_is_validated_at_the_edge(wire: Wire) -> None:
    """A set-global-status naming an instance is refused as a schema violation."""
    body = {"status_name": "X", "instance_token": str(uuid.uuid4())}
    reply = await wire.request("set-global-status", body)
    assert reply["code"] == "INVALID_MESSAGE" and "instance_token" in reply["message"]


async def test_the_global_log_is_append_only(wire: Wire, db: asyncpg.Connection) -> None:
    """global_events refuses UPDATE and DELETE, like events."""
    await wire.request("set-global-status", {"status_name": unique()})
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE global_events SET message = 'x'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM global_events")


async def test_the_client_sets_and_reads_global_statuses(worker: Worker, amqp_url: str) -> None:
    """Client.set_global_status, then get_global_events finds it with the client's user as actor."""
    name = unique()
    async with await Client.connect(amqp_url) as client:
        await client.set_global_status(name, "from the client")
        page = await client.get_global_events(status_name=name)
        with pytest.raises(InvalidRequest):
            await client.get_global_events(limit=10_001)
    [event] = page["events"]
    assert (event["message"], event["actor"]) == ("from the client", client.user)
    assert page["next_after_seq"] is None


async def test_global_set_and_ls_from_the_command_line(worker: Worker, worker_env: dict[str, str]) -> None:
    """`statusek global set` records one; `statusek global ls --name` lists it, --json too."""
    name = unique()
    done = await statusek(worker_env, "global", "set", name, "--message", "by hand")
    assert (done.returncode, done.stdout.strip()) == (0, f"global status {name} is set")
    listed = await statusek(worker_env, "global", "ls", "--name", name)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["SEQ", "STATUS", "MESSAGE", "BY", "AT"]
    assert name in row and "by hand" in row
    as_json = json.loads((await statusek(worker_env, "global", "ls", "--name", name, "--json")).stdout)
    assert [e["status_name"] for e in as_json["events"]] == [name] and as_json["next_after_seq"] is None


async def test_global_ls_hints_at_the_next_page(worker: Worker, worker_env: dict[str, str]) -> None:
    """A full page ends with a hint on stderr naming --after-seq."""
    name = unique()
    for _ in range(2):
        await statusek(worker_env, "global", "set", name)
    listed = await statusek(worker_env, "global", "ls", "--name", name, "--limit", "1")
    assert len(listed.stdout.splitlines()) == 2
    assert "--after-seq" in listed.stderr
