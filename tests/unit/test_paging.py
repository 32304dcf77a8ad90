"""Pages of get-events and find-instances, computed without I/O."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from statusek.adapters.postgres.store import find_instances_sql
from statusek.adapters.rabbitmq.parser import parse
from statusek.cli.remote import cursor, instant, page_size
from statusek.core.decide import decide
from statusek.core.errors import InvalidMessage
from statusek.core.instance import Event, EventKind, InstanceState
from statusek.core.messages import (
    PAGE_BYTES,
    QUERIES,
    Create,
    EventsQuery,
    EventView,
    FindInstances,
    InstanceQuery,
    decode_cursor,
    encode_cursor,
)
from statusek.core.model import parse_model
from statusek.core.views import answer, cut_page, found_instances

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASK = parse_model(
    {
        "object_name": "TASK",
        "statuses": [
            {"name": "STARTED", "type": "MANDATORY"},
            {"name": "FINISHED", "type": "MANDATORY", "after": ["STARTED"]},
        ],
    }
)


def pinged(pings: int, **create: object) -> tuple[InstanceState, list[Event]]:
    """An instance created at T0 and pinged `pings` times, one second apart."""
    d = decide(Create(object_name="TASK", **create), None, {"TASK": TASK}, T0, new_token=uuid4())
    assert d.state is not None
    state, events = d.state, list(d.events)
    for i in range(pings):
        event = state.next_event(EventKind.PING, T0 + timedelta(seconds=i + 1))
        state = state.record(event)
        events.append(event)
    return state, events


def invalid(routing_key: str, body: dict[str, object]) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as refused:
        parse(
            routing_key=routing_key,
            type_property=None,
            body=json.dumps(body).encode(),
            message_id=None,
            reply_to=None,
            correlation_id=None,
            table=QUERIES,
            max_body_bytes=65536,
        )
    return refused.value


def test_get_events_without_paging_fields_asks_for_the_first_1000() -> None:
    """The body of before paging still parses: after_seq 0, limit 1000."""
    token = str(uuid4())
    query = QUERIES["get-events"].model_validate({"instance_token": token})
    assert query == EventsQuery(instance_token=UUID(token), after_seq=0, limit=1000)


def test_a_full_page_of_events_points_at_the_next() -> None:
    """With one event more than the limit, the page stops at the limit; next_after_seq is its last seq."""
    state, events = pinged(5)
    query = EventsQuery(instance_token=state.token, after_seq=1, limit=3)
    data = answer("get-events", query, state, TASK, events[1:5], T0).data
    assert [e["seq"] for e in data["events"]] == [2, 3, 4]
    assert data["next_after_seq"] == 4


def test_the_last_page_of_events_has_no_next() -> None:
    """The page that reaches the last event says next_after_seq null."""
    state, events = pinged(5)
    query = EventsQuery(instance_token=state.token, after_seq=4, limit=3)
    data = answer("get-events", query, state, TASK, events[4:], T0).data
    assert [e["seq"] for e in data["events"]] == [5, 6]
    assert data["next_after_seq"] is None


def test_an_unpaged_get_events_answers_as_before() -> None:
    """An InstanceQuery (no paging) gets every event up to 1000 and a null next_after_seq."""
    state, events = pinged(3)
    data = answer("get-events", InstanceQuery(instance_token=state.token), state, TASK, events, T0).data
    assert [e["seq"] for e in data["events"]] == [1, 2, 3, 4]
    assert data["next_after_seq"] is None


def test_the_finish_of_an_overdue_instance_comes_on_the_last_page_only() -> None:
    """The finish a sweeper will write follows the stored events; a page that ends before it points at it."""
    state, events = pinged(2, instance_timeout=60)
    later = T0 + timedelta(seconds=120)
    first = answer("get-events", EventsQuery(instance_token=state.token, limit=3), state, TASK, events, later)
    assert [e["seq"] for e in first.data["events"]] == [1, 2, 3]
    assert first.data["next_after_seq"] == 3
    last = answer(
        "get-events", EventsQuery(instance_token=state.token, after_seq=3, limit=3), state, TASK, [], later
    )
    assert [(e["seq"], e["reason"]) for e in last.data["events"]] == [(4, "TIMEOUT")]
    assert last.data["next_after_seq"] is None


def test_a_page_stops_before_it_passes_the_byte_budget() -> None:
    """Large events end a page early (next_after_seq set), but a page always holds one."""
    big = "x" * (PAGE_BYTES // 3)
    views = [
        EventView(
            seq=i,
            kind="ping",
            status_name=None,
            status_type=None,
            status_description=None,
            message=big,
            occurred_at=T0,
        )
        for i in range(1, 6)
    ]
    page, more = cut_page(views, 10)
    assert ([v.seq for v in page], more) == ([1, 2], True)
    huge = views[0].model_copy(update={"message": "x" * (PAGE_BYTES + 1)})
    assert cut_page([huge], 10) == ([huge], False)


@pytest.mark.parametrize(("limit", "allowed"), [(10_000, True), (10_001, False), (0, False)])
def test_get_events_limit_is_1_to_10000(limit: int, allowed: bool) -> None:
    """A limit out of 1..10000 is a schema violation naming `limit`."""
    body = {"instance_token": str(uuid4()), "limit": limit}
    if allowed:
        assert QUERIES["get-events"].model_validate(body)
    else:
        error = invalid("get-events", body)
        assert error.reason == "schema-violation" and "limit" in error.detail


def test_a_cursor_round_trips() -> None:
    """encode_cursor and decode_cursor agree to the microsecond."""
    at, token = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC), uuid4()
    assert decode_cursor(encode_cursor(at, token)) == (at, token)


@pytest.mark.parametrize("bad", ["nonsense", encode_cursor(T0, uuid4())[:-4], "W10"])
def test_a_cursor_not_made_by_statusek_is_refused(bad: str) -> None:
    """find-instances refuses an `after` it did not give, naming the field."""
    error = invalid("find-instances", {"after": bad})
    assert error.reason == "schema-violation" and "after" in error.detail


def test_a_finish_reason_with_open_instances_is_refused() -> None:
    """finished false with a finish_reason asks for nothing: refused."""
    error = invalid("find-instances", {"finished": False, "finish_reason": "CANCELLED"})
    assert "finish_reason" in error.detail


def test_a_time_without_zone_is_refused() -> None:
    """created_after needs an offset: a naive time is ambiguous."""
    error = invalid("find-instances", {"created_after": "2026-01-01T00:00:00"})
    assert "created_after" in error.detail


@pytest.mark.parametrize(("limit", "allowed"), [(1000, True), (1001, False)])
def test_find_instances_limit_is_at_most_1000(limit: int, allowed: bool) -> None:
    """A find-instances limit over 1000 is a schema violation naming `limit`."""
    if allowed:
        assert FindInstances.model_validate({"limit": limit}).limit == limit
    else:
        assert "limit" in invalid("find-instances", {"limit": limit}).detail


def test_a_full_page_of_instances_gives_the_cursor_of_its_last() -> None:
    """next_after is the position of the page's last instance; none when everything fitted."""
    states = [pinged(0)[0] for _ in range(3)]
    full = found_instances(FindInstances(limit=2), states, T0).data
    assert [i["instance_token"] for i in full["instances"]] == [str(s.token) for s in states[:2]]
    assert decode_cursor(full["next_after"]) == (states[1].created_at, states[1].token)
    assert found_instances(FindInstances(limit=3), states, T0).data["next_after"] is None


def test_an_overdue_instance_is_listed_finished() -> None:
    """find-instances shows the finish a sweeper will write: TIMEOUT at the deadline."""
    state, _ = pinged(0, instance_timeout=60)
    [listed] = found_instances(FindInstances(), [state], T0 + timedelta(hours=1)).data["instances"]
    assert (listed["instance_is_finished"], listed["finish_reason"]) == (True, "TIMEOUT")
    assert datetime.fromisoformat(listed["finished_at"]) == T0 + timedelta(seconds=60)


def test_ls_times_without_offset_are_utc() -> None:
    """`statusek ls --since 2026-01-02` means midnight UTC."""
    assert instant("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    assert instant("2026-01-02T03:00:00+02:00") == datetime(2026, 1, 2, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        instant("yesterday")


def test_ls_checks_limit_and_cursor_before_asking() -> None:
    """A page size out of range or a made-up cursor is a usage error."""
    assert page_size(1000)("1000") == 1000
    for bad in ("0", "1001", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            page_size(1000)(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        cursor("nonsense")


def test_each_label_is_a_containment_of_its_own() -> None:
    """Two labels, two `labels @>` conditions: Postgres estimates each from its statistics."""
    sql, *args = find_instances_sql(FindInstances(labels={"team": "ops", "env": "prod"}), T0)
    assert sql.count("labels @>") == 2
    assert args[:2] == [{"env": "prod"}, {"team": "ops"}]


@pytest.mark.parametrize(
    ("filters", "uses_now"),
    [
        ({}, False),
        ({"object_name": "TASK", "finish_reason": "CANCELLED"}, False),
        ({"finished": False}, True),
        ({"finished": True, "finish_reason": "TIMEOUT"}, True),
    ],
)
def test_now_is_passed_only_when_a_deadline_is_judged(filters: dict[str, object], uses_now: bool) -> None:
    """Postgres refuses a parameter no condition uses, so `now` is passed only when needed, once."""
    sql, *args = find_instances_sql(FindInstances.model_validate(filters), T0)
    assert args.count(T0) == (1 if uses_now else 0)
    assert all(f"${i}" in sql for i in range(1, len(args) + 1))
