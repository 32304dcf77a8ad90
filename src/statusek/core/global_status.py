"""Global statuses: named events of no instance (the original Statusek's setGlobalStatus).

They form one log of their own, numbered 1, 2, 3 … without gaps. The log's
state is its last seq, locked and advanced by the command pipeline like an
instance's; these functions compute the next event and what is said about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from statusek.core.access import Sender, Writers
from statusek.core.messages import (
    GlobalEventsData,
    GlobalEventsQuery,
    GlobalEventView,
    GlobalStatus,
    Reply,
    SetGlobalStatus,
)
from statusek.core.rules import not_allowed
from statusek.core.views import Notification, cut_page

NOTIFICATION = "global-status"


@dataclass(frozen=True, slots=True)
class GlobalEvent:
    seq: int
    status_name: str
    occurred_at: datetime
    message: str | None = None
    actor: str | None = None


def decide_global(
    command: SetGlobalStatus, last_seq: int, now: datetime, sender: Sender, writers: Writers | None = None
) -> tuple[Reply, GlobalEvent | None]:
    """The reply to `set-global-status` and the event it appends after `last_seq`, if any.

    No model names their writers: `writers` comes from the settings (None: anyone may).
    The sender is recorded as the actor.
    """
    if not sender.may(writers):
        verdict = not_allowed(sender, f"set global status {command.status_name!r}", writers)
        return Reply.fail(verdict.code, verdict.message), None
    event = GlobalEvent(
        seq=last_seq + 1,
        status_name=command.status_name,
        occurred_at=now,
        message=command.status_message,
        actor=sender.name,
    )
    return Reply.ok(f"Global status {event.status_name!r} is set (seq {event.seq})"), event


def global_notification(event: GlobalEvent) -> Notification:
    """The `global-status` notification; its message_id `global:<seq>` is stable across re-sends."""
    body = GlobalStatus(
        seq=event.seq,
        status_name=event.status_name,
        status_message=event.message,
        occurred_at=event.occurred_at,
        actor=event.actor,
    )
    return Notification(
        type=NOTIFICATION,
        message_id=f"global:{event.seq}",
        instance_token=None,
        body=body.model_dump(mode="json"),
        headers={"status_name": event.status_name},
    )


def global_events_reply(query: GlobalEventsQuery, events: Sequence[GlobalEvent]) -> Reply:
    """The `get-global-events` reply; `events` are the page asked for, and one more if more follow."""
    views = [
        GlobalEventView(
            seq=e.seq, status_name=e.status_name, message=e.message, occurred_at=e.occurred_at, actor=e.actor
        )
        for e in events
        if e.seq > query.after_seq and (query.status_name is None or e.status_name == query.status_name)
    ]
    page, more = cut_page(views, query.limit)
    after = page[-1].seq if more else None
    text = f"{len(page)} global event(s)" + (f"; more after seq {after}" if more else "")
    return Reply.ok(text, GlobalEventsData(events=page, next_after_seq=after))
