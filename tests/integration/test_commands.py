"""Commands against the real broker and database, through a running worker."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from tests.helpers import TASK, create, token
from tests.integration.wire import Wire


async def test_lifecycle_publishes_both_notifications_and_the_reason(wire: Wire) -> None:
    """create -> STARTED -> FINISHED replies SUCCESS and announces each step."""
    t = await create(wire, labels={"team": "billing"})
    assert (await wire.request("set-status", {"instance_token": t, "status_name": "STARTED"}))["status"]
    assert (
        await wire.request(
            "set-status", {"instance_token": t, "status_name": "FINISHED", "status_message": "done"}
        )
    )["status"]

    finished = await wire.finished(t)
    messages = wire.notifications[t]
    assert [m.type for m in messages] == ["status-changed", "status-changed", "instance-finished"]
    bodies = [json.loads(m.body) for m in messages]
    assert [b["seq"] for b in bodies] == [2, 3, 4]
    assert bodies[1]["status_message"] == "done"
    assert json.loads(finished.body)["reason"] == "ALL_MANDATORY_STATUSES_ARE_SET"
    assert json.loads(finished.body)["statuses"] == ["STARTED", "FINISHED"]
    assert json.loads(finished.body)["labels"] == {"team": "billing"}


async def test_notifications_carry_the_contract_properties(wire: Wire) -> None:
    """Notifications are persistent JSON with type, stable message_id and headers."""
    t = await create(wire)
    await wire.request("set-status", {"instance_token": t, "status_name": "STARTED"})
    [message] = await wire.wait_notifications(t, 1)
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert message.type == "status-changed"
    assert message.message_id == f"{t}:2"
    assert message.headers == {"object_name": TASK, "instance_token": t, "status_name": "STARTED"}


async def test_status_of_unknown_instance_is_rejected(wire: Wire) -> None:
    """INSTANCE_TOKEN_IS_NOT_FOUND names the token."""
    t = token()
    reply = await wire.request("set-status", {"instance_token": t, "status_name": "STARTED"})
    assert (reply["status"], reply["code"]) == (False, "INSTANCE_TOKEN_IS_NOT_FOUND")
    assert t in reply["message"]


async def test_status_on_finished_instance_is_rejected(wire: Wire) -> None:
    """INSTANCE_IS_FINISHED once a STOP-STATUS has been set."""
    t = await create(wire, "EDGE CASES")
    await wire.request("set-status", {"instance_token": t, "status_name": "START"})
    await wire.request("set-status", {"instance_token": t, "status_name": "ABORTED"})
    reply = await wire.request("set-status", {"instance_token": t, "status_name": "FAST_PATH"})
    assert reply["code"] == "INSTANCE_IS_FINISHED"
    assert json.loads((await wire.finished(t)).body)["reason"] == "STOP_STATUS_IS_SET"


@pytest.mark.parametrize(
    ("already", "status", "code"),
    [
        ([], "NOPE", "STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT"),
        ([], "FAST_PATH", "NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET"),
        (["START"], "MERGED", "NO_PREVIOUS_OPTIONAL_STATUS_IS_SET"),
        (["START", "FAST_PATH", "MERGED"], "SLOW_PATH", "INSTANCE_IS_FINISHED"),
        (["START", "SLOW_PATH"], "START", "STATUS_IS_ALREADY_SET"),
    ],
)
async def test_rule_rejections_reply_with_their_code(
    wire: Wire, already: list[str], status: str, code: str
) -> None:
    """Each readiness check answers with its own code."""
    t = await create(wire, "EDGE CASES")
    for name in already:
        assert (await wire.request("set-status", {"instance_token": t, "status_name": name}))["status"]
    reply = await wire.request("set-status", {"instance_token": t, "status_name": status})
    assert (reply["status"], reply["code"]) == (False, code)


async def test_optional_status_after_its_next_status_is_rejected(wire: Wire) -> None:
    """AT_LEAST_ONE_NEXT_STATUS_IS_SET: an OPTIONAL cannot follow its successor."""
    t = await create(wire, "DOCUMENT REVIEW")
    for name in ("SUBMITTED", "COMMENTED", "REVISED"):
        assert (await wire.request("set-status", {"instance_token": t, "status_name": name}))["status"]
    review = await wire.request("set-status", {"instance_token": t, "status_name": "COMMENTED"})
    assert review["code"] == "AT_LEAST_ONE_NEXT_STATUS_IS_SET"


async def test_create_of_unknown_object_is_rejected(wire: Wire) -> None:
    """OBJECT_NAME_IS_NOT_FOUND names the object."""
    reply = await wire.request("create", {"object_name": "NO SUCH MODEL"})
    assert reply["code"] == "OBJECT_NAME_IS_NOT_FOUND"
    assert "NO SUCH MODEL" in reply["message"]


async def test_create_with_client_token_is_idempotent(wire: Wire) -> None:
    """The same token with the same arguments returns the same token again."""
    t = token()
    first = await wire.request("create", {"object_name": TASK, "instance_token": t})
    second = await wire.request("create", {"object_name": TASK, "instance_token": t})
    assert first["data"] == second["data"] == {"instance_token": t}
    assert second["code"] == "SUCCESS"


async def test_create_with_token_and_other_arguments_conflicts(wire: Wire) -> None:
    """INSTANCE_TOKEN_CONFLICT when the token exists with different arguments."""
    t = token()
    await wire.request("create", {"object_name": TASK, "instance_token": t})
    reply = await wire.request("create", {"object_name": TASK, "instance_token": t, "instance_timeout": 5})
    assert reply["code"] == "INSTANCE_TOKEN_CONFLICT"


async def test_rejection_without_reply_to_is_parked(wire: Wire) -> None:
    """A rule rejection nobody asked to hear lands in statusek.rejected with its code."""
    message_id = uuid.uuid4().hex
    await wire.send(
        "set-status", {"instance_token": token(), "status_name": "X"}, reply=False, message_id=message_id
    )
    parked = await wire.parked("statusek.rejected", message_id)
    assert parked.headers["x-statusek-code"] == "INSTANCE_TOKEN_IS_NOT_FOUND"
    assert "is not found" in str(parked.headers["x-statusek-message"])


@pytest.mark.parametrize(
    ("routing_key", "body", "reason"),
    [
        ("create", b"{not json", "invalid-json"),
        ("set-status", b'{"instance_token": "not-a-uuid", "status_name": "A"}', "schema-violation"),
        ("set-staus", b'{"instance_token": "3e7c3f1e-7c2c-4e0b-9d7e-2f0b9a3f1c11"}', "unknown-routing-key"),
        ("create", b'{"object_name": "' + b"x" * 70_000 + b'"}', "too-large"),
        ("create", b'{"object_name": "2-POINT LINE TASK\\u0000"}', "schema-violation"),
        (
            "create",
            b'{"object_name": "2-POINT LINE TASK", "labels": {"team": "a\\u0000"}}',
            "schema-violation",
        ),
        (
            "ping",
            b'{"instance_token": "3e7c3f1e-7c2c-4e0b-9d7e-2f0b9a3f1c11", "code": NaN}',
            "schema-violation",
        ),
        ("create", b'{"object_name": "2-POINT LINE TASK", "instance_timeout": Infinity}', "schema-violation"),
        ("create", b'{"object_name": "2-POINT LINE TASK", "object_name": "DATA EXPORT"}', "invalid-json"),
    ],
)
async def test_bad_input_is_dead_lettered_with_reason(
    wire: Wire, routing_key: str, body: bytes, reason: str
) -> None:
    """Unparseable deliveries land in statusek.dead-letter and the sender hears INVALID_MESSAGE."""
    message_id = uuid.uuid4().hex
    reply = await wire.request(routing_key, body, message_id=message_id)
    assert reply["code"] == "INVALID_MESSAGE"
    parked = await wire.parked("statusek.dead-letter", message_id)
    assert parked.headers["x-statusek-reason"] == reason
    # Bodies over the dead-letter limit (64 KiB) are cut; their size is kept.
    assert parked.body == body[: 64 * 1024]
    assert parked.headers["x-statusek-original-size"] == len(body)
    # The worker keeps serving after bad input.
    await create(wire)


async def test_an_encoded_body_is_refused(wire: Wire) -> None:
    """A content_encoding statusek cannot undo (gzip) is dead-lettered as INVALID_MESSAGE, never guessed."""
    message_id = uuid.uuid4().hex
    body = json.dumps({"object_name": "2-POINT LINE TASK"}).encode()
    reply = await wire.request("create", body, message_id=message_id, content_encoding="gzip")
    assert reply["code"] == "INVALID_MESSAGE"
    assert "content_encoding 'gzip'" in reply["message"]
    parked = await wire.parked("statusek.dead-letter", message_id)
    assert parked.headers["x-statusek-reason"] == "invalid-json"


async def test_a_refusal_by_postgres_reaches_the_sender_without_its_text(
    wire: Wire, db: asyncpg.Connection
) -> None:
    """A command Postgres refuses is dead-lettered with the detail; the reply has only a generic sentence."""
    secret = f"internal detail {uuid.uuid4().hex}"
    # A real refusal by the database, for this one label only, so no other test meets it.
    await db.execute(
        f"""
        CREATE OR REPLACE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.labels ? 'refuse-me' THEN RAISE EXCEPTION '{secret}'; END IF;
            RETURN NEW;
        END $$;
        CREATE OR REPLACE TRIGGER refuse_marked BEFORE INSERT ON instances
            FOR EACH ROW EXECUTE FUNCTION refuse_marked();
        """
    )
    try:
        message_id = uuid.uuid4().hex
        body = {"object_name": TASK, "labels": {"refuse-me": "yes"}}
        reply = await wire.request("create", body, message_id=message_id)
        parked = await wire.parked("statusek.dead-letter", message_id)
    finally:
        await db.execute("DROP TRIGGER refuse_marked ON instances; DROP FUNCTION refuse_marked()")
    assert (reply["code"], reply["data"]["reason"]) == ("INVALID_MESSAGE", "store-failure")
    assert secret not in json.dumps(reply)
    assert parked.headers["x-statusek-reason"] == "store-failure"
    assert secret in str(parked.headers["x-statusek-detail"])


async def test_schema_violation_names_the_field(wire: Wire) -> None:
    """The INVALID_MESSAGE reply names the field that is wrong."""
    reply = await wire.request("set-status", {"instance_token": token(), "status_nam": "A"})
    assert "status_name" in reply["message"] and "status_nam" in reply["message"]


async def test_command_without_any_properties_is_applied(wire: Wire, database_url: str) -> None:
    """A routing key and a JSON body are enough, as from the management UI."""
    t = token()
    await wire.send("create", {"object_name": TASK, "instance_token": t}, reply=False)
    await wire.send("set-status", {"instance_token": t, "status_name": "STARTED"}, reply=False)
    [message] = await wire.wait_notifications(t, 1)
    assert json.loads(message.body)["status_name"] == "STARTED"


async def test_command_published_straight_to_the_queue_uses_the_type_property(wire: Wire) -> None:
    """Via the default exchange the routing key is the queue name; `type` names the command."""
    t = token()
    reply = await wire.request(
        "statusek.commands", {"object_name": TASK, "instance_token": t}, exchange="", type="create"
    )
    assert reply["code"] == "SUCCESS"


async def test_ping_and_cancel_are_recorded(wire: Wire) -> None:
    """ping replies with a deadline; cancel finishes with CANCELLED."""
    t = await create(wire, instance_timeout=60)
    ping = await wire.request("ping", {"instance_token": t, "message": "page 7 of 10", "code": 7})
    assert ping["code"] == "SUCCESS" and ping["data"]["deadline"]
    await wire.request("cancel", {"instance_token": t, "reason": "user gave up"})
    finished = json.loads((await wire.finished(t)).body)
    assert (finished["reason"], finished["message"]) == ("CANCELLED", "user gave up")
    assert (await wire.request("ping", {"instance_token": t}))["code"] == "INSTANCE_IS_FINISHED"


async def test_event_log_refuses_updates_and_deletes(wire: Wire, database_url: str) -> None:
    """The events table is append-only, enforced by the database."""
    await create(wire)
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE events SET message = 'x'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM events")
    finally:
        await conn.close()


async def test_repeated_message_id_is_applied_once(wire: Wire, database_url: str) -> None:
    """A re-published message_id gets the stored reply and adds no event."""
    t = await create(wire)
    message_id = uuid.uuid4().hex
    body = {"instance_token": t, "status_name": "STARTED"}
    first = await wire.request("set-status", body, message_id=message_id)
    again = await wire.request("set-status", body, message_id=message_id)
    assert first == again and first["code"] == "SUCCESS"
    conn = await asyncpg.connect(database_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM events WHERE instance_token = $1", uuid.UUID(t))
    finally:
        await conn.close()
    assert count == 2  # created + STARTED
