"""What one schedule recorded: plain data, so the checker can be fed hand-made histories."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sent:
    """One publish of a command, and what its client heard back."""

    index: int
    routing_key: str
    tag: str  # a marker unique to the body: the effect in the log carries it
    token: str | None  # the instance concerned (None: a create that lets statusek choose)
    message_id: str | None
    headered: bool
    patience: float  # seconds the client waits for the reply before it gives up
    duplicate: bool = False  # a re-publish of an earlier command: same message_id, same body
    reuses_id: bool = False  # a different command with an earlier command's message_id
    code: str | None = None  # the reply heard within `patience`; None: "no answer"
    status: bool | None = None
    late_code: str | None = None  # a reply that came after the client gave up


@dataclass(frozen=True)
class EventRow:
    token: str
    seq: int
    kind: str  # created | status | ping | finished
    occurred_at: float  # seconds since the epoch
    status_name: str | None = None
    message: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Note:
    """One notification as one subscriber received it (in arrival order in its list)."""

    token: str
    seq: int
    type: str  # status-changed | instance-finished
    at: float  # occurred_at or finished_at, seconds since the epoch
    reason: str | None = None


@dataclass
class History:
    seed: int
    faults: list[str]
    commands: list[Sent] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    created_tags: dict[str, str | None] = field(default_factory=dict)  # instance token -> its create's tag
    notes: dict[str, list[Note]] = field(default_factory=dict)  # subscriber -> notifications
    healthy: set[str] = field(default_factory=set)  # subscribers whose queue never filled
    full_for: float | None = None  # at most this many seconds a subscriber queue refused publishes
    seconds: float = 0.0
    info: dict[str, object] = field(default_factory=dict)
