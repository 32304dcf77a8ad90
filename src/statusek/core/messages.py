"""The wire contract as frozen pydantic models (SPEC section 4).

Deliveries are parsed into these at the edge; the core never sees raw bytes.
The JSON Schemas under `schemas/` are generated from these classes.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from statusek.core.codes import Code, FinishReason
from statusek.core.model import StatusType

MAX_NAME = 255
MAX_TEXT = 4096
MAX_LABELS = 32
# Ten years: anything longer is a typo, and it keeps timestamps far from overflow.
MAX_TIMEOUT_SECONDS = 315_360_000

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS)]
Labels = Annotated[dict[Name, Text], Field(max_length=MAX_LABELS)]


class WireMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Create(WireMessage):
    """Create an instance of a model; replies with its token."""

    object_name: Name
    instance_timeout: Seconds | None = None
    heartbeat_timeout: Seconds | None = None
    instance_token: UUID | None = Field(
        default=None, description="Chosen by the client; makes create idempotent."
    )
    labels: Labels = Field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """The arguments a repeated create must match to be an idempotent success."""
        return {
            "object_name": self.object_name,
            "instance_timeout": self.instance_timeout,
            "heartbeat_timeout": self.heartbeat_timeout,
            "labels": dict(self.labels),
        }


class SetStatus(WireMessage):
    """Set a status on an instance, checked against its model version."""

    instance_token: UUID
    status_name: Name
    status_message: Text | None = None


class Ping(WireMessage):
    """Record that the task's worker is alive; moves the heartbeat deadline."""

    instance_token: UUID
    code: Annotated[int, Field(ge=-(2**31), lt=2**31)] | None = None
    message: Text | None = None


class Cancel(WireMessage):
    """Finish an instance now with reason CANCELLED."""

    instance_token: UUID
    reason: Text | None = None


class StatusQuery(WireMessage):
    """Body of `is-set` and `is-ready`."""

    instance_token: UUID
    status_name: Name


class InstanceQuery(WireMessage):
    """Body of `is-finished`, `get-events` and `get-instance`."""

    instance_token: UUID


# The longest since..until range get-report takes, in days (both included): a year, leap or not.
MAX_REPORT_DAYS = 366


class ReportQuery(WireMessage):
    """Body of `get-report`: timing figures of one object's finished instances, by day of finish (UTC)."""

    object_name: Name
    since: date | None = Field(default=None, description="First day of finish (UTC), inclusive.")
    until: date | None = Field(
        default=None,
        description=f"Last day of finish (UTC), inclusive; since..until spans at most {MAX_REPORT_DAYS}"
        " days, both included.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReportQuery:
        if self.since and self.until:
            if self.since > self.until:
                raise ValueError("since is after until")
            days = (self.until - self.since).days + 1
            if days > MAX_REPORT_DAYS:
                raise ValueError(
                    f"until: since..until spans {days} days, at most {MAX_REPORT_DAYS}; ask for"
                    " several ranges, or leave out since (or until) for everything before (after)"
                )
        return self


# Paging (docs/contract.md, "Paging"). A page holds at most `limit` items, fewer when they pass PAGE_BYTES of
# JSON (a reply must stay well under RabbitMQ's message size limit); it always holds at least one.
# Only a null `next_after_seq` / `next_after` says there is nothing more.
DEFAULT_EVENTS_PAGE = 1000
MAX_EVENTS_PAGE = 10_000
DEFAULT_INSTANCES_PAGE = 100
MAX_INSTANCES_PAGE = 1000
PAGE_BYTES = 4 * 1024 * 1024

EventsLimit = Annotated[int, Field(ge=1, le=MAX_EVENTS_PAGE)]


class EventsQuery(InstanceQuery):
    """Body of `get-events`: one page of an instance's events, oldest first."""

    after_seq: Annotated[int, Field(ge=0, lt=2**31)] = Field(
        default=0, description="Only events with a seq above this (0: from the first)."
    )
    limit: EventsLimit = Field(
        default=DEFAULT_EVENTS_PAGE, description=f"At most this many events (at most {MAX_EVENTS_PAGE})."
    )


class SetGlobalStatus(WireMessage):
    """Record a named event that belongs to no instance (the original Statusek's setGlobalStatus)."""

    status_name: Name
    status_message: Text | None = None


class GlobalEventsQuery(WireMessage):
    """Body of `get-global-events`: one page of global events, oldest first."""

    after_seq: Annotated[int, Field(ge=0, lt=2**63)] = Field(
        default=0, description="Only events with a seq above this (0: from the first)."
    )
    limit: EventsLimit = Field(
        default=DEFAULT_EVENTS_PAGE, description=f"At most this many events (at most {MAX_EVENTS_PAGE})."
    )
    status_name: Name | None = Field(default=None, description="Only events of this status name.")


def encode_cursor(created_at: datetime, token: UUID) -> str:
    """The `next_after` of a `find-instances` page: the position of its last instance, opaque to clients."""
    raw = json.dumps([created_at.isoformat(), str(token)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """(created_at, token) of a cursor made by `encode_cursor`; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, token = json.loads(raw)
        created_at = datetime.fromisoformat(at)
        position = (created_at, UUID(token))
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError("not a cursor of find-instances: pass the next_after of the previous page") from e
    if created_at.tzinfo is None:
        raise ValueError("not a cursor of find-instances: pass the next_after of the previous page")
    return position


def _cursor(cursor: str) -> str:
    decode_cursor(cursor)
    return cursor


Cursor = Annotated[str, StringConstraints(max_length=MAX_NAME), AfterValidator(_cursor)]


class FindInstances(WireMessage):
    """Body of `find-instances`: instances matching every filter given, oldest first, one page."""

    object_name: Name | None = None
    labels: Labels = Field(default_factory=dict, description="Each of these labels, with this value.")
    finished: bool | None = Field(
        default=None, description="true: finished instances only; false: open ones only."
    )
    finish_reason: FinishReason | None = None
    created_after: AwareDatetime | None = Field(default=None, description="created_at at or after this.")
    created_before: AwareDatetime | None = Field(default=None, description="created_at before this.")
    after: Cursor | None = Field(default=None, description="The `next_after` of the previous page.")
    limit: Annotated[int, Field(ge=1, le=MAX_INSTANCES_PAGE)] = Field(
        default=DEFAULT_INSTANCES_PAGE,
        description=f"At most this many instances (at most {MAX_INSTANCES_PAGE}).",
    )

    @model_validator(mode="after")
    def _reason_needs_finished(self) -> FindInstances:
        if self.finished is False and self.finish_reason is not None:
            raise ValueError("finish_reason asks for finished instances, finished false for open ones")
        return self


Command = Create | SetStatus | Ping | Cancel

COMMANDS: dict[str, type[WireMessage]] = {
    "create": Create,
    "set-status": SetStatus,
    "ping": Ping,
    "cancel": Cancel,
    "set-global-status": SetGlobalStatus,
}
QUERIES: dict[str, type[WireMessage]] = {
    "is-set": StatusQuery,
    "is-ready": StatusQuery,
    "is-finished": InstanceQuery,
    "get-events": EventsQuery,
    "get-instance": InstanceQuery,
    "get-report": ReportQuery,
    "get-global-events": GlobalEventsQuery,
    "find-instances": FindInstances,
}


# A command's optional absolute deadline: a worker that takes it later refuses it (`EXPIRED`).
DEADLINE_HEADER = "x-statusek-deadline"


class Reply(WireMessage):
    """Every command and query is answered with this envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    status: bool
    code: Code
    message: str
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def ok(cls, message: str, data: WireMessage | None = None) -> Reply:
        return cls(
            status=True,
            code=Code.SUCCESS,
            message=message,
            data=data.model_dump(mode="json") if data is not None else {},
        )

    @classmethod
    def fail(cls, code: Code, message: str, **data: Any) -> Reply:
        return cls(status=False, code=code, message=message, data=data)


class EventView(WireMessage):
    """One entry of the `get-events` reply."""

    seq: int
    kind: Literal["created", "status", "ping", "finished"]
    status_name: str | None
    status_type: StatusType | None
    status_description: str | None
    message: str | None
    code: int | None = None
    reason: FinishReason | None = None
    occurred_at: datetime
    actor: str | None = Field(
        default=None,
        description="Who caused it: the sender's AMQP user_id, 'anonymous', or null for a deadline.",
    )


class CreatedData(WireMessage):
    """`data` of a successful `create` reply."""

    instance_token: UUID


class NoData(WireMessage):
    """`data` of a successful `set-status`, `cancel` or `set-global-status` reply: an empty object."""


class PingData(WireMessage):
    """`data` of a successful `ping` reply: the instance's next deadline, if any."""

    deadline: datetime | None


class IsSetData(WireMessage):
    status_is_set: bool


class IsReadyData(WireMessage):
    status_is_ready_to_set: bool
    status_is_ready_to_set_description: str
    status_is_ready_to_set_code: Code


class IsFinishedData(WireMessage):
    instance_is_finished: bool
    instance_is_finished_description: FinishReason | None = Field(description="The finish reason.")


class EventsData(WireMessage):
    events: list[EventView]
    next_after_seq: int | None = Field(
        default=None, description="Pass as after_seq for the next page; null after the last event."
    )
    # What the events' statuses are: a reader need not ask get-instance as well.
    model_version: int = Field(description="The version of the instance's model.")
    model: dict[str, Any] = Field(description="The definition of the instance's model version.")


class PingSummary(WireMessage):
    """The pings of one sender to an instance, in `get-instance`."""

    sender: str = Field(description="The sender's AMQP user_id, or 'anonymous'.")
    count: int
    first_at: datetime
    last_at: datetime
    last_message: str | None = Field(description="The message of this sender's latest ping.")


class InstanceView(WireMessage):
    """`data` of `get-instance`."""

    instance_token: UUID
    object_name: str
    model_version: int
    labels: dict[str, str]
    created_at: datetime
    instance_deadline: datetime | None
    heartbeat_timeout: float | None
    heartbeat_deadline: datetime | None
    instance_is_finished: bool
    finish_reason: FinishReason | None
    finished_at: datetime | None
    statuses: list[str]
    last_seq: int
    model: dict[str, Any] = Field(description="The definition of the instance's model version.")
    pings: list[PingSummary] = Field(
        default_factory=list, description="Pings per sender, the sender of the latest ping first."
    )


class GlobalEventView(WireMessage):
    """One entry of the `get-global-events` reply."""

    seq: int
    status_name: str
    message: str | None
    occurred_at: datetime
    actor: str | None = Field(description="Who set it: the sender's AMQP user_id, or 'anonymous'.")


class GlobalEventsData(WireMessage):
    events: list[GlobalEventView]
    next_after_seq: int | None = Field(
        description="Pass as after_seq for the next page; null after the last event."
    )


class InstanceSummary(WireMessage):
    """One entry of the `find-instances` reply."""

    instance_token: UUID
    object_name: str
    model_version: int
    labels: dict[str, str]
    created_at: datetime
    instance_is_finished: bool
    finish_reason: FinishReason | None
    finished_at: datetime | None
    statuses: list[str]


class FoundInstances(WireMessage):
    """`data` of `find-instances`."""

    instances: list[InstanceSummary]
    next_after: str | None = Field(description="Pass as `after` for the next page; null after the last.")


class DurationFigures(WireMessage):
    """Durations in seconds; p50 and p95 are nearest-rank percentiles, null when count is 0."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None
    mean: float | None
    exact: bool = Field(
        description="false: p50 and p95 are estimated from the histograms of purged days, within"
        " `percentile_error`; count, max and mean are exact either way."
    )


class ReasonFigures(DurationFigures):
    """Durations from create to finish of the instances that finished for one reason."""

    finish_reason: FinishReason


class StatusFigures(DurationFigures):
    """Durations from the previous status (or the creation) to this status."""

    status_name: str


class ReportData(WireMessage):
    """`data` of `get-report`."""

    object_name: str
    since: date | None
    until: date | None
    instances: int = Field(description="Instances that finished in the range, purged or not.")
    purged: int = Field(description="Of which purged: counted from the daily aggregates.")
    duration: DurationFigures = Field(description="From create to finish.")
    by_reason: list[ReasonFigures]
    statuses: list[StatusFigures]
    sla: float | None = Field(description="Seconds from create to finish, of the latest model version.")
    sla_breaches: int | None = Field(
        description="Instances that took longer than the SLA of their model version; null when no"
        " version has one."
    )
    percentile_error: float = Field(
        description="Bound on the relative error of a p50 or p95 that is not exact (0.0443: 4.43 %)."
    )


class InvalidData(WireMessage):
    """`data` of an INVALID_MESSAGE reply."""

    reason: Literal["invalid-json", "schema-violation", "unknown-routing-key", "too-large"]


REPLY_DATA: dict[str, type[WireMessage]] = {
    "create": CreatedData,
    "set-status": NoData,
    "ping": PingData,
    "cancel": NoData,
    "set-global-status": NoData,
    "is-set": IsSetData,
    "is-ready": IsReadyData,
    "is-finished": IsFinishedData,
    "get-events": EventsData,
    "get-instance": InstanceView,
    "get-report": ReportData,
    "get-global-events": GlobalEventsData,
    "find-instances": FoundInstances,
}


class StatusChanged(WireMessage):
    """Notification `status-changed` on `statusek.events`."""

    instance_token: UUID
    object_name: str
    model_version: int
    status_name: str
    status_type: StatusType
    status_message: str | None
    seq: int
    occurred_at: datetime
    labels: dict[str, str]
    actor: str | None = Field(
        default=None,
        description="Who caused it: the sender's AMQP user_id, 'anonymous', or null for a deadline.",
    )


class InstanceFinished(WireMessage):
    """Notification `instance-finished` on `statusek.events`."""

    instance_token: UUID
    object_name: str
    model_version: int
    reason: FinishReason
    message: str | None = None
    seq: int
    finished_at: datetime
    statuses: list[str]
    labels: dict[str, str]
    actor: str | None = Field(
        default=None,
        description="Who caused it: the sender's AMQP user_id, 'anonymous', or null for a deadline.",
    )


class GlobalStatus(WireMessage):
    """Notification `global-status` on `statusek.events`: a status of no instance was set."""

    seq: int
    status_name: str
    status_message: str | None
    occurred_at: datetime
    actor: str | None = Field(description="Who set it: the sender's AMQP user_id, or 'anonymous'.")
