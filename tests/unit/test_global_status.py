"""Global statuses computed without I/O: the next event, its notification, pages of the log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from statusek.adapters.rabbitmq.parser import parse
from statusek.core.access import Sender, Writers
from statusek.core.errors import InvalidMessage
from statusek.core.global_status import GlobalEvent, decide_global, global_events_reply, global_notification
from statusek.core.messages import COMMANDS, QUERIES, GlobalEventsQuery, SetGlobalStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def log(*names: str) -> list[GlobalEvent]:
    return [GlobalEvent(i, name, T0 + timedelta(seconds=i)) for i, name in enumerate(names, start=1)]


def test_the_event_follows_the_last_seq_and_names_its_sender() -> None:
    """set-global-status appends seq last+1, actor = the sender, and replies SUCCESS with no data."""
    command = SetGlobalStatus(status_name="DEPLOYED", status_message="v2")
    reply, event = decide_global(command, 41, T0, Sender("ops-bot"))
    assert event is not None
    assert (event.seq, event.status_name, event.message, event.actor) == (42, "DEPLOYED", "v2", "ops-bot")
    assert (reply.code, reply.data) == ("SUCCESS", {})


def test_an_anonymous_sender_is_recorded_as_anonymous() -> None:
    """A command without user_id is recorded with actor 'anonymous'."""
    _, event = decide_global(SetGlobalStatus(status_name="X"), 0, T0, Sender())
    assert event is not None
    assert (event.seq, event.actor) == (1, "anonymous")


def test_global_writers_refuse_others_and_append_nothing() -> None:
    """With writers set, a sender outside them gets NOT_ALLOWED naming them, and no event."""
    writers = Writers(("ops",))
    groups = {"ops": frozenset({"alice"})}
    command = SetGlobalStatus(status_name="DEPLOYED")
    reply, event = decide_global(command, 3, T0, Sender("mallory", groups), writers)
    assert (reply.code, event) == ("NOT_ALLOWED", None)
    assert "'mallory'" in reply.message and "DEPLOYED" in reply.message
    _, allowed = decide_global(command, 3, T0, Sender("alice", groups), writers)
    assert allowed is not None and allowed.seq == 4


def test_the_notification_has_a_stable_id_and_the_status_header() -> None:
    """global-status: message_id global:<seq>, header status_name, no instance."""
    n = global_notification(GlobalEvent(7, "DEPLOYED", T0, "v2", "ops-bot"))
    assert (n.type, n.message_id, n.instance_token, n.headers) == (
        "global-status",
        "global:7",
        None,
        {"status_name": "DEPLOYED"},
    )
    assert n.body == {
        "seq": 7,
        "status_name": "DEPLOYED",
        "status_message": "v2",
        "occurred_at": "2026-01-01T00:00:00Z",
        "actor": "ops-bot",
    }


def test_a_full_page_points_at_the_next() -> None:
    """One event more than the limit: the page ends at the limit and next_after_seq is its last seq."""
    reply = global_events_reply(GlobalEventsQuery(limit=2), log("A", "B", "C"))
    assert [e["seq"] for e in reply.data["events"]] == [1, 2]
    assert reply.data["next_after_seq"] == 2


def test_the_last_page_has_no_next() -> None:
    """No event beyond the page: next_after_seq is null."""
    reply = global_events_reply(GlobalEventsQuery(after_seq=2, limit=2), log("A", "B", "C")[2:])
    assert [e["seq"] for e in reply.data["events"]] == [3]
    assert reply.data["next_after_seq"] is None


def test_get_global_events_has_defaults() -> None:
    """An empty body asks for the first 1000 events of every name."""
    query = QUERIES["get-global-events"].model_validate({})
    assert query == GlobalEventsQuery(after_seq=0, limit=1000, status_name=None)


def test_a_limit_over_the_maximum_is_invalid_and_named() -> None:
    """limit above 10000 is a schema violation naming `limit`."""
    with pytest.raises(InvalidMessage) as refused:
        parse(
            routing_key="get-global-events",
            type_property=None,
            body=b'{"limit": 10001}',
            message_id=None,
            reply_to=None,
            correlation_id=None,
            table=QUERIES,
            max_body_bytes=65536,
        )
    assert refused.value.reason == "schema-violation" and "limit" in refused.value.detail


def test_set_global_status_is_checked_at_the_edge() -> None:
    """A set-global-status without status_name, or with an instance_token, is refused."""
    for body in (b"{}", b'{"status_name": "A", "instance_token": "6f1c2a80-0000-4000-8000-000000000001"}'):
        with pytest.raises(InvalidMessage):
            parse(
                routing_key="set-global-status",
                type_property=None,
                body=body,
                message_id=None,
                reply_to=None,
                correlation_id=None,
                table=COMMANDS,
                max_body_bytes=65536,
            )
