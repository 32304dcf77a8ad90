"""What a command does to an instance: a pure function of state, model and time.

The pipeline loads states, calls `decide` for each command in delivery order
(feeding each result into the next), and stores what comes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from statusek.core.access import ANONYMOUS_SENDER, Sender, Writers
from statusek.core.codes import Code, FinishReason
from statusek.core.instance import Event, EventKind, InstanceState, expire
from statusek.core.messages import Cancel, Command, Create, CreatedData, Ping, PingData, Reply, SetStatus
from statusek.core.model import StatusModel
from statusek.core.rules import finish_reason_after, not_allowed, readiness


@dataclass(frozen=True, slots=True)
class Decision:
    reply: Reply
    state: InstanceState | None = None
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Policy:
    """Settings the rules depend on, passed in so the core reads no environment."""

    default_instance_timeout: float | None = None
    # Who may set global statuses (no model names them); None: anyone.
    global_writers: Writers | None = None


def decide(
    command: Command,
    state: InstanceState | None,
    models: Mapping[str, StatusModel],
    now: datetime,
    *,
    new_token: UUID,
    policy: Policy = Policy(),
    sender: Sender = ANONYMOUS_SENDER,
) -> Decision:
    """The reply to `command` and the events it appends.

    `state` is the instance the command names (for `create`, the one holding
    the client's token, if any). `models` maps object names to the model
    version that applies: the latest for `create`, the instance's own
    version otherwise. A passed deadline finishes the instance before the
    command is judged, so its finish event may come out even on rejection.
    `sender` is who sent it: checked against the model's writers, and
    recorded as the actor of the events it appends.
    """
    if isinstance(command, Create):
        return _create(command, state, models.get(command.object_name), now, new_token, policy, sender)
    if state is None:
        token = command.instance_token
        return Decision(Reply.fail(Code.INSTANCE_TOKEN_IS_NOT_FOUND, f"Instance {token} is not found"))
    state, events = expire(state, now)
    if state.is_finished:
        return Decision(_finished_reply(state), state, events)
    model = models[state.object_name]
    if isinstance(command, SetStatus):
        decision = _set_status(command, state, model, now, sender)
    elif not sender.may(model.writers):
        action = "ping" if isinstance(command, Ping) else "cancel"
        verdict = not_allowed(sender, f"{action} instances of object {model.object_name!r}", model.writers)
        decision = Decision(Reply.fail(verdict.code, verdict.message))
    elif isinstance(command, Ping):
        decision = _ping(command, state, now, sender)
    else:
        decision = _cancel(command, state, now, sender)
    return Decision(decision.reply, decision.state or state, events + decision.events)


def _finished_reply(state: InstanceState) -> Reply:
    return Reply.fail(
        Code.INSTANCE_IS_FINISHED,
        f"Instance {state.token} is finished ({state.finish_reason})",
    )


def _create(
    command: Create,
    existing: InstanceState | None,
    model: StatusModel | None,
    now: datetime,
    new_token: UUID,
    policy: Policy,
    sender: Sender,
) -> Decision:
    if model is not None and not sender.may(model.writers):
        verdict = not_allowed(sender, f"create instances of object {model.object_name!r}", model.writers)
        return Decision(Reply.fail(verdict.code, verdict.message))
    if existing is not None:
        if existing.create_args == command.fingerprint():
            return Decision(
                Reply.ok("Instance already exists", CreatedData(instance_token=existing.token)), existing
            )
        return Decision(
            Reply.fail(
                Code.INSTANCE_TOKEN_CONFLICT,
                f"Instance {existing.token} already exists with different arguments",
            )
        )
    if model is None:
        return Decision(
            Reply.fail(Code.OBJECT_NAME_IS_NOT_FOUND, f"Object {command.object_name!r} is not found")
        )
    token = command.instance_token or new_token
    timeout = command.instance_timeout or model.instance_timeout or policy.default_instance_timeout
    heartbeat = command.heartbeat_timeout or model.heartbeat_timeout
    state = InstanceState(
        token=token,
        object_name=model.object_name,
        model_version=model.version,
        created_at=now,
        create_args=command.fingerprint(),
        labels=dict(command.labels),
        instance_deadline=now + timedelta(seconds=timeout) if timeout else None,
        heartbeat_timeout=heartbeat,
        heartbeat_deadline=now + timedelta(seconds=heartbeat) if heartbeat else None,
    )
    created = state.next_event(EventKind.CREATED, now, actor=sender.name)
    return Decision(
        Reply.ok("Instance is created", CreatedData(instance_token=token)), state.record(created), [created]
    )


def _set_status(
    command: SetStatus, state: InstanceState, model: StatusModel, now: datetime, sender: Sender
) -> Decision:
    verdict = readiness(model, state.statuses, command.status_name, str(state.token), sender)
    if not verdict.ok:
        return Decision(Reply.fail(verdict.code, verdict.message))
    status = model.status(command.status_name)
    assert status is not None  # readiness() has checked it exists
    event = state.next_event(
        EventKind.STATUS,
        now,
        status_name=status.name,
        status_type=status.type,
        message=command.status_message,
        actor=sender.name,
    )
    state = state.record(event)
    events = [event]
    reason = finish_reason_after(model, state.statuses, status.name)
    if reason is not None:
        finished = state.next_event(EventKind.FINISHED, now, reason=reason, actor=sender.name)
        state = state.record(finished)
        events.append(finished)
    return Decision(Reply.ok(f"Status {status.name!r} is set"), state, events)


def _ping(command: Ping, state: InstanceState, now: datetime, sender: Sender) -> Decision:
    event = state.next_event(
        EventKind.PING, now, code=command.code, message=command.message, actor=sender.name
    )
    state = state.record(event)
    deadline = state.next_deadline
    return Decision(
        Reply.ok("Ping is recorded", PingData(deadline=deadline)),
        state,
        [event],
    )


def _cancel(command: Cancel, state: InstanceState, now: datetime, sender: Sender) -> Decision:
    event = state.next_event(
        EventKind.FINISHED, now, reason=FinishReason.CANCELLED, message=command.reason, actor=sender.name
    )
    return Decision(Reply.ok(f"Instance {state.token} is cancelled"), state.record(event), [event])


def sweep(state: InstanceState, now: datetime) -> Decision:
    """The deadline sweeper's decision: finish the instance if it is overdue."""
    state, events = expire(state, now)
    return Decision(Reply.ok("swept"), state, events)
