"""Read-side of the core: answers to queries and notifications of events.

Queries see an overdue instance as finished even before a sweeper has
written it, because `expire` computes the very event the sweeper will write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from statusek.core.access import ANONYMOUS_SENDER, Sender
from statusek.core.codes import Code
from statusek.core.instance import Event, EventKind, InstanceState, expire
from statusek.core.messages import (
    PAGE_BYTES,
    EventsData,
    EventsQuery,
    EventView,
    FindInstances,
    FoundInstances,
    InstanceFinished,
    InstanceQuery,
    InstanceSummary,
    InstanceView,
    IsFinishedData,
    IsReadyData,
    IsSetData,
    PingSummary,
    Reply,
    StatusChanged,
    StatusQuery,
    WireMessage,
    encode_cursor,
)
from statusek.core.model import StatusModel
from statusek.core.rules import Verdict, readiness


def answer(
    kind: str,
    query: WireMessage,
    state: InstanceState | None,
    model: StatusModel | None,
    events: Sequence[Event],
    now: datetime,
    sender: Sender = ANONYMOUS_SENDER,
    pings: Sequence[PingSummary] = (),
) -> Reply:
    """The reply to a read-only query; `events` is only needed for `get-events`, `pings` (the
    summary per sender) for `get-instance`.

    `is-ready` answers for `sender`: a status they may not set is not ready for them.
    """
    assert isinstance(query, StatusQuery | InstanceQuery)
    if state is None or model is None:
        return Reply.fail(Code.INSTANCE_TOKEN_IS_NOT_FOUND, f"Instance {query.instance_token} is not found")
    state, expired = expire(state, now)
    token = str(state.token)
    if kind == "is-set":
        assert isinstance(query, StatusQuery)
        is_set = query.status_name in state.statuses
        text = "is set" if is_set else "is not set"
        return Reply.ok(
            f"Status {query.status_name!r} {text} on instance {token}", IsSetData(status_is_set=is_set)
        )
    if kind == "is-ready":
        assert isinstance(query, StatusQuery)
        if state.is_finished:
            verdict = Verdict(
                Code.INSTANCE_IS_FINISHED, f"Instance {token} is finished ({state.finish_reason})"
            )
        else:
            verdict = readiness(model, state.statuses, query.status_name, token, sender)
        return Reply.ok(
            verdict.message,
            IsReadyData(
                status_is_ready_to_set=verdict.ok,
                status_is_ready_to_set_description=verdict.message,
                status_is_ready_to_set_code=verdict.code,
            ),
        )
    if kind == "is-finished":
        reason = state.finish_reason
        text = f"is finished ({reason})" if reason else "is not finished"
        return Reply.ok(
            f"Instance {token} {text}",
            IsFinishedData(instance_is_finished=state.is_finished, instance_is_finished_description=reason),
        )
    if kind == "get-events":
        # `events` may be only the page asked for (and one more, to tell whether more follow);
        # an overdue instance's finish, not yet written by a sweeper, comes after the last of them.
        paging = query if isinstance(query, EventsQuery) else EventsQuery(instance_token=query.instance_token)
        wanted = [e for e in [*events, *expired] if e.seq > paging.after_seq][: paging.limit + 1]
        views, more = cut_page([event_view(e, model) for e in wanted], paging.limit)
        after = views[-1].seq if more else None
        text = f"{len(views)} event(s) of instance {token}" + (f"; more after seq {after}" if more else "")
        return Reply.ok(
            text,
            EventsData(
                events=views,
                next_after_seq=after,
                model_version=state.model_version,
                model=model.definition(),
            ),
        )
    if kind == "get-instance":
        return Reply.ok(f"Instance {token}", instance_view(state, model, pings))
    raise ValueError(f"unknown query {kind!r}")


def event_view(event: Event, model: StatusModel) -> EventView:
    status = model.status(event.status_name) if event.status_name else None
    return EventView(
        seq=event.seq,
        kind=event.kind.value,
        status_name=event.status_name,
        status_type=event.status_type,
        status_description=status.description if status else None,
        message=event.message,
        code=event.code,
        reason=event.reason,
        occurred_at=event.occurred_at,
        actor=event.actor,
    )


def instance_view(
    state: InstanceState, model: StatusModel, pings: Sequence[PingSummary] = ()
) -> InstanceView:
    return InstanceView(
        instance_token=state.token,
        object_name=state.object_name,
        model_version=state.model_version,
        labels=state.labels,
        created_at=state.created_at,
        instance_deadline=state.instance_deadline,
        heartbeat_timeout=state.heartbeat_timeout,
        heartbeat_deadline=state.heartbeat_deadline if not state.is_finished else None,
        instance_is_finished=state.is_finished,
        finish_reason=state.finish_reason,
        finished_at=state.finished_at,
        statuses=list(state.statuses),
        last_seq=state.last_seq,
        model=model.definition(),
        pings=list(pings),
    )


View = TypeVar("View", bound=WireMessage)


def cut_page(views: Sequence[View], limit: int) -> tuple[list[View], bool]:
    """The first `limit` of `views` that fit in PAGE_BYTES of JSON (at least one), and whether any are left.

    Give it up to `limit + 1` views: one more than the page tells that more follow.
    """
    page: list[View] = []
    size = 0
    for view in views[:limit]:
        size += len(view.model_dump_json().encode())
        if page and size > PAGE_BYTES:
            return page, True
        page.append(view)
    return page, len(views) > limit


def found_instances(query: FindInstances, states: Sequence[InstanceState], now: datetime) -> Reply:
    """The `find-instances` reply: up to `query.limit` of `states` (given in page order, one more if any)."""
    summaries, more = cut_page([instance_summary(s, now) for s in states], query.limit)
    last = summaries[-1] if more else None
    after = encode_cursor(last.created_at, last.instance_token) if last else None
    return Reply.ok(f"{len(summaries)} instance(s)", FoundInstances(instances=summaries, next_after=after))


def instance_summary(state: InstanceState, now: datetime) -> InstanceSummary:
    """An instance as `find-instances` lists it: finished at a passed deadline even before a sweeper ran."""
    state, _ = expire(state, now)
    return InstanceSummary(
        instance_token=state.token,
        object_name=state.object_name,
        model_version=state.model_version,
        labels=state.labels,
        created_at=state.created_at,
        instance_is_finished=state.is_finished,
        finish_reason=state.finish_reason,
        finished_at=state.finished_at,
        statuses=list(state.statuses),
    )


@dataclass(frozen=True, slots=True)
class Notification:
    """A message for `statusek.events`; `message_id` is stable across re-sends."""

    type: str
    message_id: str
    instance_token: str | None  # None for a global status, which belongs to no instance
    body: dict[str, Any]
    headers: dict[str, str]


def notification_for(event: Event, state: InstanceState) -> Notification | None:
    """The notification an event announces; `state` is the instance after it."""
    token = str(event.instance_token)
    common = {
        "instance_token": event.instance_token,
        "object_name": state.object_name,
        "model_version": state.model_version,
        "seq": event.seq,
        "labels": state.labels,
        "actor": event.actor,
    }
    headers = {"object_name": state.object_name, "instance_token": token}
    message: WireMessage
    if event.kind is EventKind.STATUS:
        assert event.status_name and event.status_type
        message = StatusChanged(
            **common,
            status_name=event.status_name,
            status_type=event.status_type,
            status_message=event.message,
            occurred_at=event.occurred_at,
        )
        headers["status_name"] = event.status_name
        kind = "status-changed"
    elif event.kind is EventKind.FINISHED:
        assert event.reason
        message = InstanceFinished(
            **common,
            reason=event.reason,
            message=event.message,
            finished_at=event.occurred_at,
            # A finish is an instance's last event: every status set precedes it.
            statuses=list(state.statuses),
        )
        headers["reason"] = event.reason.value
        kind = "instance-finished"
    else:
        return None
    return Notification(
        type=kind,
        message_id=f"{token}:{event.seq}",
        instance_token=token,
        body=message.model_dump(mode="json"),
        headers=headers,
    )
