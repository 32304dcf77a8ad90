"""Writer lists: who may create, ping, cancel and set a status; the actor of each event."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from statusek.core.access import Sender, Writers, parse_groups
from statusek.core.codes import Code
from statusek.core.decide import Decision, decide
from statusek.core.instance import EventKind, InstanceState, expire
from statusek.core.messages import Cancel, Create, Ping, SetStatus, StatusQuery
from statusek.core.model import ModelError, StatusModel, check_model, parse_model
from statusek.core.views import answer, notification_for
from tests.helpers import T0, created

GROUPS = parse_groups({"groups": {"reviewers": ["alice", "bob"]}}, "groups.yaml")
REVIEW = parse_model(
    {
        "object_name": "REVIEW",
        "writers": ["author-service", "reviewers", "anonymous"],
        "statuses": [
            {"name": "SUBMITTED", "type": "MANDATORY"},
            {"name": "APPROVED", "type": "MANDATORY", "after": ["SUBMITTED"], "writers": ["reviewers"]},
        ],
    }
)
CLOSED = parse_model(
    {"object_name": "CLOSED", "writers": ["svc"], "statuses": [{"name": "DONE", "type": "MANDATORY"}]}
)


def sender(user: str | None) -> Sender:
    return Sender(user, GROUPS)


def setting(model: StatusModel, state: InstanceState, name: str, user: str | None) -> Decision:
    command = SetStatus(instance_token=state.token, status_name=name)
    return decide(command, state, {model.object_name: model}, T0, new_token=uuid4(), sender=sender(user))


def set_status(model: StatusModel, state: InstanceState, name: str, user: str | None) -> tuple[Code, str]:
    reply = setting(model, state, name, user).reply
    return Code(reply.code), reply.message


def submitted(by: str = "author-service") -> InstanceState:
    """A REVIEW instance with SUBMITTED set by `by`."""
    state = setting(REVIEW, created(REVIEW, sender=sender("author-service")).state, "SUBMITTED", by).state
    assert state is not None
    return state


def test_a_group_member_may_set_a_status_reserved_to_the_group() -> None:
    """alice is a reviewer, so she may approve."""
    assert set_status(REVIEW, submitted(), "APPROVED", "alice")[0] is Code.SUCCESS


def test_a_user_outside_the_writers_gets_not_allowed_naming_user_and_status() -> None:
    """The author may submit but not approve; the message names both."""
    state = created(REVIEW, sender=sender("author-service")).state
    code, message = set_status(REVIEW, state, "APPROVED", "author-service")
    assert code is Code.NOT_ALLOWED
    assert "'author-service'" in message and "'APPROVED'" in message and "reviewers" in message


def test_the_writer_check_comes_after_the_status_is_known_and_before_readiness() -> None:
    """An unknown status is still STATUS_NAME_IS_NOT_FOUND; a not-yet-ready one is NOT_ALLOWED first."""
    state = created(REVIEW, sender=sender("author-service")).state
    assert set_status(REVIEW, state, "NOPE", "mallory")[0] is Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT
    # APPROVED needs SUBMITTED first, but mallory may not set it at all: that is said first.
    assert set_status(REVIEW, state, "APPROVED", "mallory")[0] is Code.NOT_ALLOWED


def test_a_status_without_writers_follows_the_model_writers() -> None:
    """SUBMITTED has no list of its own: the model's (which admits anonymous) decides."""
    state = created(REVIEW, sender=sender("author-service")).state
    assert set_status(REVIEW, state, "SUBMITTED", None)[0] is Code.SUCCESS
    assert set_status(REVIEW, state, "SUBMITTED", "mallory")[0] is Code.NOT_ALLOWED


def test_anonymous_is_refused_where_the_model_does_not_name_it() -> None:
    """A command without user_id is `anonymous`, and CLOSED admits only svc."""
    command = Create(object_name="CLOSED")
    reply = decide(command, None, {"CLOSED": CLOSED}, T0, new_token=uuid4(), sender=sender(None)).reply
    assert reply.code == Code.NOT_ALLOWED
    assert "'anonymous'" in reply.message and "create" in reply.message


@pytest.mark.parametrize("command", ["ping", "cancel"])
def test_ping_and_cancel_need_a_model_writer(command: str) -> None:
    """Model-level writers guard ping and cancel as well as create."""
    state = created(CLOSED, sender=sender("svc")).state
    message = Ping(instance_token=state.token) if command == "ping" else Cancel(instance_token=state.token)
    refused = decide(message, state, {"CLOSED": CLOSED}, T0, new_token=uuid4(), sender=sender("eve")).reply
    assert refused.code == Code.NOT_ALLOWED and command in refused.message
    allowed = decide(message, state, {"CLOSED": CLOSED}, T0, new_token=uuid4(), sender=sender("svc")).reply
    assert allowed.code == Code.SUCCESS


def test_a_model_without_writers_admits_everyone() -> None:
    """No writer list keeps statusek's open behaviour, anonymous included."""
    open_model = parse_model({"object_name": "OPEN", "statuses": [{"name": "A", "type": "MANDATORY"}]})
    state = created(open_model, sender=sender(None)).state
    assert set_status(open_model, state, "A", None)[0] is Code.SUCCESS


def test_events_record_their_actor_and_deadlines_record_none() -> None:
    """Each event carries who caused it; a timeout is statusek's own (None)."""
    model = parse_model(
        {"object_name": "T", "instance_timeout": 5, "statuses": [{"name": "A", "type": "MANDATORY"}]}
    )
    create = Create(object_name="T")
    decision = decide(create, None, {"T": model}, T0, new_token=uuid4(), sender=sender("svc"))
    assert [e.actor for e in decision.events] == ["svc"]
    assert decision.state is not None
    _, timed_out = expire(decision.state, datetime(2026, 1, 2, tzinfo=UTC))
    assert [(e.kind, e.actor) for e in timed_out] == [(EventKind.FINISHED, None)]


def test_notifications_carry_the_actor() -> None:
    """status-changed and instance-finished name the user that caused them."""
    decision = setting(REVIEW, created(REVIEW, sender=sender("author-service")).state, "SUBMITTED", "bob")
    assert decision.state is not None
    notification = notification_for(decision.events[0], decision.state)
    assert notification is not None and notification.body["actor"] == "bob"


def test_is_ready_answers_for_the_asking_user() -> None:
    """APPROVED after SUBMITTED is ready for alice and NOT_ALLOWED for the author."""
    state = submitted()
    query = StatusQuery(instance_token=state.token, status_name="APPROVED")
    for user, ready, code in (("alice", True, "SUCCESS"), ("author-service", False, "NOT_ALLOWED")):
        data = answer("is-ready", query, state, REVIEW, [], T0, sender(user)).data
        assert (data["status_is_ready_to_set"], data["status_is_ready_to_set_code"]) == (ready, code)


def test_writers_are_part_of_the_definition_and_digest() -> None:
    """Adding writers makes a new model version; a model without them hashes as before."""
    raw = {"object_name": "D", "statuses": [{"name": "A", "type": "MANDATORY"}]}
    guarded = {**raw, "statuses": [{"name": "A", "type": "MANDATORY", "writers": ["x"]}]}
    assert parse_model(raw).digest() != parse_model(guarded).digest()
    assert "writers" not in parse_model(raw).definition()


@pytest.mark.parametrize(
    ("writers", "problem"),
    [([], "at least one"), ([""], "list of user or group names"), (7, "list of user or group names")],
)
def test_bad_writer_lists_are_model_errors(writers: object, problem: str) -> None:
    """An empty or non-text writer list is refused with the field named."""
    raw = {"object_name": "W", "statuses": [{"name": "A", "type": "MANDATORY", "writers": writers}]}
    model, problems = check_model(raw)
    assert model is None
    assert any(p.field_path == "statuses[0].writers" and problem in p.problem for p in problems), problems
    assert all(isinstance(p, ModelError) for p in problems)


def test_anonymous_is_never_admitted_through_a_group() -> None:
    """Groups hold users; a command without user_id is not any of them."""
    assert not Writers(("reviewers",)).admit(None, GROUPS)
    with pytest.raises(ValueError, match="anonymous"):
        parse_groups({"groups": {"everyone": ["anonymous"]}}, "g.yaml")


def test_a_bad_groups_file_is_named() -> None:
    """Members must be a list of names; the message names file and group."""
    with pytest.raises(ValueError, match=r"g\.yaml: groups\.reviewers"):
        parse_groups({"groups": {"reviewers": "alice"}}, "g.yaml")
