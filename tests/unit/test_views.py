"""Queries and notifications computed from state, without I/O."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

from statusek.core.decide import decide, sweep
from statusek.core.messages import InstanceQuery, SetStatus, StatusQuery
from statusek.core.model import parse_model
from statusek.core.views import answer, notification_for
from tests.helpers import T0, created

TASK = parse_model(
    {
        "object_name": "TASK",
        "statuses": [
            {"name": "STARTED", "type": "MANDATORY"},
            {"name": "FINISHED", "type": "MANDATORY", "after": ["STARTED"]},
        ],
    },
    version=2,
)


def test_overdue_instance_is_finished_before_any_sweeper_ran() -> None:
    """is-finished answers TIMEOUT for a stored state whose deadline has passed."""
    state = created(TASK, instance_timeout=5).state
    reply = answer(
        "is-finished", InstanceQuery(instance_token=state.token), state, TASK, [], T0 + timedelta(seconds=6)
    )
    assert reply.data == {"instance_is_finished": True, "instance_is_finished_description": "TIMEOUT"}


def test_get_events_shows_the_finish_the_sweeper_will_write() -> None:
    """The virtual finish event is the very event a sweeper writes later: same seq, same time."""
    decision = created(TASK, instance_timeout=5)
    state, events = decision.state, decision.events
    later = T0 + timedelta(seconds=60)
    shown = answer("get-events", InstanceQuery(instance_token=state.token), state, TASK, events, later).data[
        "events"
    ]
    swept = sweep(state, later + timedelta(seconds=30)).events
    assert [(e["seq"], e["kind"], e["reason"]) for e in shown] == [
        (1, "created", None),
        (2, "finished", "TIMEOUT"),
    ]
    assert (
        datetime.fromisoformat(shown[1]["occurred_at"]) == swept[0].occurred_at == T0 + timedelta(seconds=5)
    )


def test_is_ready_on_a_finished_instance_says_so() -> None:
    """is-ready reports INSTANCE_IS_FINISHED first, as set-status would."""
    state = created(TASK, instance_timeout=5).state
    reply = answer(
        "is-ready",
        StatusQuery(instance_token=state.token, status_name="STARTED"),
        state,
        TASK,
        [],
        T0 + timedelta(seconds=9),
    )
    assert reply.data["status_is_ready_to_set"] is False
    assert reply.data["status_is_ready_to_set_code"] == "INSTANCE_IS_FINISHED"


def test_notifications_carry_stable_ids_and_headers() -> None:
    """status-changed and instance-finished get message_id token:seq and the contract headers."""
    state = created(TASK).state
    d = decide(
        SetStatus(instance_token=state.token, status_name="STARTED"),
        state,
        {"TASK": TASK},
        T0,
        new_token=uuid4(),
    )
    d = decide(
        SetStatus(instance_token=state.token, status_name="FINISHED"),
        d.state,
        {"TASK": TASK},
        T0,
        new_token=uuid4(),
    )
    assert d.state is not None
    changed, finished = (notification_for(e, d.state) for e in d.events)
    assert changed is not None and finished is not None
    assert (changed.type, changed.message_id) == ("status-changed", f"{state.token}:3")
    assert changed.headers == {
        "object_name": "TASK",
        "instance_token": str(state.token),
        "status_name": "FINISHED",
    }
    assert finished.body["reason"] == "ALL_MANDATORY_STATUSES_ARE_SET"
    assert finished.body["statuses"] == ["STARTED", "FINISHED"] and finished.body["model_version"] == 2
