"""The five read-only queries of SPEC section 4."""

from __future__ import annotations

import uuid

import asyncpg

from statusek.settings import Settings
from statusek.testing import Services, fresh_database, fresh_vhost, running_worker
from tests.helpers import create
from tests.integration.wire import Wire


async def started(wire: Wire) -> str:
    t = await create(wire, "EDGE CASES", labels={"job": "42"})
    await wire.request("set-status", {"instance_token": t, "status_name": "START", "status_message": "go"})
    return t


async def test_is_set(wire: Wire) -> None:
    """is-set tells whether a status is set."""
    t = await started(wire)
    assert (await wire.query("is-set", {"instance_token": t, "status_name": "START"}))["data"] == {
        "status_is_set": True
    }
    assert (await wire.query("is-set", {"instance_token": t, "status_name": "MERGED"}))["data"] == {
        "status_is_set": False
    }


async def test_is_ready_explains_why_not(wire: Wire) -> None:
    """is-ready answers with the first failing check's code and text."""
    t = await started(wire)
    ready = (await wire.query("is-ready", {"instance_token": t, "status_name": "FAST_PATH"}))["data"]
    assert ready["status_is_ready_to_set"] is True
    not_ready = (await wire.query("is-ready", {"instance_token": t, "status_name": "MERGED"}))["data"]
    assert not_ready["status_is_ready_to_set"] is False
    assert not_ready["status_is_ready_to_set_code"] == "NO_PREVIOUS_OPTIONAL_STATUS_IS_SET"
    assert "FAST_PATH" in not_ready["status_is_ready_to_set_description"]


async def test_is_finished_gives_the_reason(wire: Wire) -> None:
    """is-finished reports the finish reason once finished."""
    t = await started(wire)
    assert (await wire.query("is-finished", {"instance_token": t}))["data"]["instance_is_finished"] is False
    await wire.request("set-status", {"instance_token": t, "status_name": "ABORTED"})
    data = (await wire.query("is-finished", {"instance_token": t}))["data"]
    assert data == {"instance_is_finished": True, "instance_is_finished_description": "STOP_STATUS_IS_SET"}


async def test_get_events_oldest_first(wire: Wire) -> None:
    """get-events lists every event with its seq, kind and status details."""
    t = await started(wire)
    await wire.request("ping", {"instance_token": t, "message": "page 7 of 10"})
    events = (await wire.query("get-events", {"instance_token": t}))["data"]["events"]
    assert [(e["seq"], e["kind"], e["status_name"]) for e in events] == [
        (1, "created", None),
        (2, "status", "START"),
        (3, "ping", None),
    ]
    assert events[1]["status_type"] == "MANDATORY" and events[1]["message"] == "go"
    assert events[2]["message"] == "page 7 of 10"
    assert all(e["occurred_at"] for e in events)


async def test_get_instance(wire: Wire) -> None:
    """get-instance shows model version, labels, deadlines and statuses."""
    t = await started(wire)
    data = (await wire.query("get-instance", {"instance_token": t}))["data"]
    assert data["instance_token"] == t
    assert data["object_name"] == "EDGE CASES" and data["model_version"] >= 1
    assert data["labels"] == {"job": "42"}
    assert data["statuses"] == ["START"]
    assert data["instance_is_finished"] is False and data["instance_deadline"]


async def test_query_of_unknown_instance(wire: Wire) -> None:
    """Queries name a missing token with INSTANCE_TOKEN_IS_NOT_FOUND."""
    reply = await wire.query("is-finished", {"instance_token": str(uuid.uuid4())})
    assert (reply["status"], reply["code"]) == (False, "INSTANCE_TOKEN_IS_NOT_FOUND")


async def test_bad_query_is_dead_lettered(wire: Wire) -> None:
    """A malformed query is dead-lettered and answered INVALID_MESSAGE."""
    message_id = uuid.uuid4().hex
    reply = await wire.request(
        "is-set", {"instance_token": "x"}, exchange="statusek.queries", message_id=message_id
    )
    assert reply["code"] == "INVALID_MESSAGE"
    parked = await wire.parked("statusek.dead-letter", message_id)
    assert parked.headers["x-statusek-reason"] == "schema-violation"


async def test_a_query_postgres_refuses_is_dead_lettered_not_retried(
    services: Services, settings: Settings
) -> None:
    """A read Postgres refuses (here: its table is gone) gets INVALID_MESSAGE at once, not a retry loop."""
    with fresh_vhost(services.amqp_url, admin=services.rabbit) as amqp_url:
        async with fresh_database(services.database_url) as database_url:
            own = settings.model_copy(update={"amqp_url": amqp_url, "database_url": database_url})
            async with running_worker(own):
                wire = await Wire.open(amqp_url)
                try:
                    t = await create(wire, "EDGE CASES")
                    db = await asyncpg.connect(database_url)
                    try:
                        await db.execute("ALTER TABLE events RENAME TO events_elsewhere")
                        message_id = uuid.uuid4().hex
                        reply = await wire.request(
                            "get-events",
                            {"instance_token": t},
                            exchange="statusek.queries",
                            message_id=message_id,
                        )
                        parked = await wire.parked("statusek.dead-letter", message_id)
                    finally:
                        await db.execute("ALTER TABLE events_elsewhere RENAME TO events")
                        await db.close()
                finally:
                    await wire.close()
    assert (reply["code"], reply["data"]["reason"]) == ("INVALID_MESSAGE", "store-failure")
    assert "events" not in reply["message"]  # the database's own text stays in the dead-letter copy
    assert "events" in str(parked.headers["x-statusek-detail"])
