"""The seven readiness checks and the finish rules, on pure values."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

import pytest

from statusek.core.codes import Code, FinishReason
from statusek.core.decide import Policy, decide, sweep
from statusek.core.instance import EventKind, InstanceState
from statusek.core.messages import Cancel, Create, Ping, SetStatus
from statusek.core.model import StatusModel, parse_model
from tests.helpers import T0, created

EDGES = parse_model(
    {
        "object_name": "EDGES",
        "statuses": [
            {"name": "START", "type": "MANDATORY"},
            {"name": "FAST", "type": "OPTIONAL", "after": ["START"]},
            {"name": "SLOW", "type": "OPTIONAL", "after": ["START"]},
            {"name": "MERGED", "type": "MANDATORY", "after": ["FAST", "SLOW"]},
            {"name": "ABORT", "type": "STOP-STATUS", "after": ["START"]},
        ],
    },
    version=3,
)
ONLY_OPTIONAL = parse_model(
    {
        "object_name": "LOOSE",
        "statuses": [{"name": "A", "type": "OPTIONAL"}, {"name": "B", "type": "OPTIONAL"}],
    }
)


def apply(state: InstanceState, *names: str, model: StatusModel = EDGES, at: datetime = T0) -> InstanceState:
    for name in names:
        d = decide(
            SetStatus(instance_token=state.token, status_name=name),
            state,
            {model.object_name: model},
            at,
            new_token=uuid4(),
        )
        assert d.reply.status, d.reply
        assert d.state is not None
        state = d.state
    return state


def code_of(state: InstanceState | None, name: str, model: StatusModel = EDGES, at: datetime = T0) -> Code:
    token = state.token if state else UUID(int=1)
    d = decide(
        SetStatus(instance_token=token, status_name=name),
        state,
        {model.object_name: model},
        at,
        new_token=uuid4(),
    )
    return Code(d.reply.code)


def test_check_1_unknown_instance() -> None:
    """A missing instance gives INSTANCE_TOKEN_IS_NOT_FOUND."""
    assert code_of(None, "START") is Code.INSTANCE_TOKEN_IS_NOT_FOUND


def test_check_2_finished_instance() -> None:
    """A finished instance gives INSTANCE_IS_FINISHED before any status check."""
    state = apply(created(EDGES).state, "START", "ABORT")
    assert code_of(state, "NOT_EVEN_A_STATUS") is Code.INSTANCE_IS_FINISHED


def test_check_3_status_not_in_model() -> None:
    """An unknown status gives STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT."""
    assert code_of(created(EDGES).state, "NOPE") is Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT


def test_check_4_previous_mandatory_missing() -> None:
    """A MANDATORY predecessor must be set first."""
    assert code_of(created(EDGES).state, "FAST") is Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET


def test_check_5_all_previous_optional_need_one() -> None:
    """A status whose predecessors are all OPTIONAL needs one of them set."""
    assert code_of(apply(created(EDGES).state, "START"), "MERGED") is Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET


def test_check_5_one_optional_predecessor_is_enough() -> None:
    """Any one OPTIONAL predecessor satisfies check 5."""
    assert code_of(apply(created(EDGES).state, "START", "SLOW"), "MERGED") is Code.SUCCESS
    state = apply(created(EDGES).state, "START", "SLOW", "MERGED")
    assert state.finish_reason is FinishReason.ALL_MANDATORY_STATUSES_ARE_SET


def test_check_6_optional_after_its_next_is_set() -> None:
    """An OPTIONAL cannot be set once a status listing it in `after` is set."""
    open_model = parse_model(
        {
            "object_name": "OPEN",
            "statuses": [
                {"name": "A", "type": "OPTIONAL"},
                {"name": "B", "type": "OPTIONAL", "after": ["A"]},
                {"name": "END", "type": "MANDATORY", "after": ["B"]},
            ],
        }
    )
    state = apply(created(open_model).state, "A", "B", model=open_model)
    assert code_of(state, "A", model=open_model) is Code.AT_LEAST_ONE_NEXT_STATUS_IS_SET


def test_check_6_comes_before_check_7() -> None:
    """An OPTIONAL already set whose next is set reports the next, not 'already set'."""
    model = parse_model(
        {
            "object_name": "ORDER",
            "statuses": [
                {"name": "A", "type": "MANDATORY"},
                {"name": "O", "type": "OPTIONAL", "after": ["A"]},
                {"name": "N", "type": "OPTIONAL", "after": ["O"]},
                {"name": "END", "type": "MANDATORY", "after": ["A"]},
            ],
        }
    )
    state = apply(created(model).state, "A", "O", "N", model=model)
    assert code_of(state, "O", model=model) is Code.AT_LEAST_ONE_NEXT_STATUS_IS_SET


def test_check_7_status_already_set() -> None:
    """Setting a status twice gives STATUS_IS_ALREADY_SET."""
    assert code_of(apply(created(EDGES).state, "START"), "START") is Code.STATUS_IS_ALREADY_SET


def test_stop_status_finishes() -> None:
    """A STOP-STATUS finishes with STOP_STATUS_IS_SET."""
    state = apply(created(EDGES).state, "START", "ABORT")
    assert state.finish_reason is FinishReason.STOP_STATUS_IS_SET


def test_all_mandatory_finishes() -> None:
    """Setting the last MANDATORY status finishes the instance."""
    state = apply(created(EDGES).state, "START", "FAST")
    assert not state.is_finished
    assert apply(state, "MERGED").finish_reason is FinishReason.ALL_MANDATORY_STATUSES_ARE_SET


def test_model_without_mandatory_finishes_on_first_status() -> None:
    """No MANDATORY statuses: the first status set finishes the instance."""
    state = apply(created(ONLY_OPTIONAL).state, "B", model=ONLY_OPTIONAL)
    assert state.finish_reason is FinishReason.ALL_MANDATORY_STATUSES_ARE_SET


def test_events_are_numbered_without_gaps() -> None:
    """created, statuses and the finish get seq 1, 2, 3 ..."""
    d = decide(
        SetStatus(instance_token=uuid4(), status_name="ABORT"),
        apply(created(EDGES).state, "START"),
        {"EDGES": EDGES},
        T0,
        new_token=uuid4(),
    )
    assert [e.seq for e in d.events] == [3, 4]
    assert [e.kind for e in d.events] == [EventKind.STATUS, EventKind.FINISHED]


def test_create_keeps_the_model_version() -> None:
    """An instance records the version it was created with."""
    assert created(EDGES).state.model_version == 3


def test_create_unknown_object() -> None:
    """OBJECT_NAME_IS_NOT_FOUND when no model has that name."""
    d = decide(Create(object_name="X"), None, {}, T0, new_token=uuid4())
    assert d.reply.code == Code.OBJECT_NAME_IS_NOT_FOUND and "'X'" in d.reply.message


def test_create_same_token_same_arguments_is_idempotent() -> None:
    """The same client token with the same arguments succeeds with no new event."""
    token = uuid4()
    state = created(EDGES, instance_token=token).state
    d = decide(
        Create(object_name="EDGES", instance_token=token), state, {"EDGES": EDGES}, T0, new_token=uuid4()
    )
    assert d.reply.status and d.reply.data == {"instance_token": str(token)} and not d.events


def test_create_same_token_other_arguments_conflicts() -> None:
    """A client token reused with other arguments gives INSTANCE_TOKEN_CONFLICT."""
    token = uuid4()
    state = created(EDGES, instance_token=token).state
    d = decide(
        Create(object_name="EDGES", instance_token=token, labels={"a": "b"}),
        state,
        {"EDGES": EDGES},
        T0,
        new_token=uuid4(),
    )
    assert d.reply.code == Code.INSTANCE_TOKEN_CONFLICT


def test_timeouts_come_from_create_then_model_then_policy() -> None:
    """instance_timeout: the command's, else the model's, else the policy default."""
    with_model = parse_model(
        {"object_name": "T", "instance_timeout": 60, "statuses": [{"name": "A", "type": "MANDATORY"}]}
    )
    assert created(with_model).state.instance_deadline == T0 + timedelta(seconds=60)
    assert created(with_model, instance_timeout=5).state.instance_deadline == T0 + timedelta(seconds=5)
    d = decide(Create(object_name="EDGES"), None, {"EDGES": EDGES}, T0, new_token=uuid4(), policy=Policy(30))
    assert d.state is not None and d.state.instance_deadline == T0 + timedelta(seconds=30)
    assert created(EDGES).state.instance_deadline is None


def test_passed_deadline_finishes_before_the_command() -> None:
    """A command after the deadline sees the instance finished by TIMEOUT."""
    state = created(EDGES, instance_timeout=10).state
    later = T0 + timedelta(seconds=11)
    d = decide(
        SetStatus(instance_token=state.token, status_name="START"),
        state,
        {"EDGES": EDGES},
        later,
        new_token=uuid4(),
    )
    assert d.reply.code == Code.INSTANCE_IS_FINISHED
    assert [(e.kind, e.reason, e.occurred_at) for e in d.events] == [
        (EventKind.FINISHED, FinishReason.TIMEOUT, T0 + timedelta(seconds=10))
    ]


def test_heartbeat_moves_with_activity() -> None:
    """A status or a ping moves the heartbeat deadline; silence finishes it."""
    state = created(EDGES, heartbeat_timeout=5, instance_timeout=100).state
    state = apply(state, "START", at=T0 + timedelta(seconds=4))
    assert state.heartbeat_deadline == T0 + timedelta(seconds=9)
    d = decide(
        Ping(instance_token=state.token),
        state,
        {"EDGES": EDGES},
        T0 + timedelta(seconds=8),
        new_token=uuid4(),
    )
    assert d.state is not None and d.state.heartbeat_deadline == T0 + timedelta(seconds=13)
    assert datetime.fromisoformat(d.reply.data["deadline"]) == T0 + timedelta(seconds=13)
    swept = sweep(d.state, T0 + timedelta(seconds=13))
    assert swept.state is not None and swept.state.finish_reason is FinishReason.HEARTBEAT_TIMEOUT


def test_ping_after_deadline_is_rejected() -> None:
    """A ping that arrives after the heartbeat deadline does not revive the instance."""
    state = created(EDGES, heartbeat_timeout=1).state
    d = decide(
        Ping(instance_token=state.token),
        state,
        {"EDGES": EDGES},
        T0 + timedelta(seconds=1),
        new_token=uuid4(),
    )
    assert d.reply.code == Code.INSTANCE_IS_FINISHED
    assert d.state is not None and d.state.finish_reason is FinishReason.HEARTBEAT_TIMEOUT


def test_earlier_deadline_gives_the_reason() -> None:
    """When both deadlines passed, the earlier one is the reason."""
    state = created(EDGES, instance_timeout=3, heartbeat_timeout=5).state
    swept = sweep(state, T0 + timedelta(seconds=60))
    assert swept.state is not None and swept.state.finish_reason is FinishReason.TIMEOUT


def test_sweep_leaves_open_instances_alone() -> None:
    """Before the deadline the sweeper changes nothing."""
    assert sweep(created(EDGES, instance_timeout=3).state, T0 + timedelta(seconds=2)).events == []


def test_cancel_finishes_with_reason() -> None:
    """cancel finishes with CANCELLED and keeps the given reason."""
    state = created(EDGES).state
    d = decide(
        Cancel(instance_token=state.token, reason="no longer needed"),
        state,
        {"EDGES": EDGES},
        T0,
        new_token=uuid4(),
    )
    assert d.state is not None and d.state.finish_reason is FinishReason.CANCELLED
    assert d.events[-1].message == "no longer needed"
    again = decide(Cancel(instance_token=state.token), d.state, {"EDGES": EDGES}, T0, new_token=uuid4())
    assert again.reply.code == Code.INSTANCE_IS_FINISHED


@pytest.mark.parametrize(
    ("already", "name"),
    [([], "NOPE"), ([], "FAST"), (["START"], "MERGED"), (["START"], "START"), (["START", "ABORT"], "FAST")],
)
def test_rejections_name_the_instance_or_object(already: list[str], name: str) -> None:
    """Every rejection message names what it is about."""
    state = apply(created(EDGES).state, *already)
    d = decide(
        SetStatus(instance_token=state.token, status_name=name),
        state,
        {"EDGES": EDGES},
        T0,
        new_token=uuid4(),
    )
    assert not d.reply.status
    assert str(state.token) in d.reply.message or "'EDGES'" in d.reply.message


def test_unknown_status_suggests_the_closest_name() -> None:
    """A status name in the wrong case is answered with the right one and the model's statuses."""
    d = decide(
        SetStatus(instance_token=created(EDGES).state.token, status_name="start"),
        created(EDGES).state,
        {EDGES.object_name: EDGES},
        T0,
        new_token=uuid4(),
    )
    assert d.reply.code == Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT
    assert d.reply.message.endswith(
        ": did you mean 'START'? (names are case-sensitive); known: START, FAST, SLOW, MERGED, ABORT"
    )
