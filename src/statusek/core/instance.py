"""Instance state and the events that change it.

The event log is the record; `InstanceState` is the projection kept beside it
so a command needs one row, not a replay. Both are plain values: the store
loads and saves them, the core computes the next ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from statusek.core.codes import FinishReason
from statusek.core.model import StatusType


class EventKind(StrEnum):
    CREATED = "created"
    STATUS = "status"
    PING = "ping"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Event:
    instance_token: UUID
    seq: int
    kind: EventKind
    occurred_at: datetime
    status_name: str | None = None
    status_type: StatusType | None = None
    message: str | None = None
    code: int | None = None
    reason: FinishReason | None = None
    # Who caused it: the sender's user name, `anonymous`, or None for statusek itself (a deadline).
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceState:
    token: UUID
    object_name: str
    model_version: int
    created_at: datetime
    create_args: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    instance_deadline: datetime | None = None
    heartbeat_timeout: float | None = None
    heartbeat_deadline: datetime | None = None
    statuses: tuple[str, ...] = ()
    last_seq: int = 0
    finished_at: datetime | None = None
    finish_reason: FinishReason | None = None

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    @property
    def next_deadline(self) -> datetime | None:
        """The earliest moment this open instance finishes by itself."""
        if self.is_finished:
            return None
        candidates = [d for d in (self.instance_deadline, self.heartbeat_deadline) if d]
        return min(candidates) if candidates else None

    def overdue(self, now: datetime) -> tuple[datetime, FinishReason] | None:
        """When and why this instance finished by deadline, if one has passed."""
        if self.is_finished:
            return None
        passed = [
            (deadline, reason)
            for deadline, reason in (
                (self.instance_deadline, FinishReason.TIMEOUT),
                (self.heartbeat_deadline, FinishReason.HEARTBEAT_TIMEOUT),
            )
            if deadline is not None and deadline <= now
        ]
        return min(passed, key=lambda p: p[0]) if passed else None

    def record(self, event: Event) -> InstanceState:
        """The state after `event`; activity moves the heartbeat deadline."""
        if event.seq != self.last_seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow {self.last_seq}")
        state = replace(self, last_seq=event.seq)
        if event.kind is EventKind.STATUS and event.status_name:
            state = replace(state, statuses=(*state.statuses, event.status_name))
        if event.kind in (EventKind.STATUS, EventKind.PING) and self.heartbeat_timeout:
            state = replace(
                state,
                heartbeat_deadline=event.occurred_at + timedelta(seconds=self.heartbeat_timeout),
            )
        if event.kind is EventKind.FINISHED:
            state = replace(state, finished_at=event.occurred_at, finish_reason=event.reason)
        return state

    def next_event(self, kind: EventKind, occurred_at: datetime, **fields: Any) -> Event:
        return Event(self.token, self.last_seq + 1, kind, occurred_at, **fields)


def expire(state: InstanceState, now: datetime) -> tuple[InstanceState, list[Event]]:
    """Finish an instance whose deadline has passed; the event is dated at the deadline.

    Dating it at the deadline rather than at detection makes the event the
    same whoever computes it first: a query, a command or any sweeper.
    """
    due = state.overdue(now)
    if due is None:
        return state, []
    deadline, reason = due
    event = state.next_event(EventKind.FINISHED, deadline, reason=reason)
    return state.record(event), [event]
