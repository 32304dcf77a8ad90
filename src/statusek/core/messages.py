"""The wire contract as frozen pydantic models (SPEC section 4).

Deliveries are parsed into these at the edge; the core never sees raw bytes.
The JSON Schemas under `schemas/` are generated from these classes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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


Command = Create | SetStatus | Ping | Cancel

COMMANDS: dict[str, type[WireMessage]] = {
    "create": Create,
    "set-status": SetStatus,
    "ping": Ping,
    "cancel": Cancel,
}
QUERIES: dict[str, type[WireMessage]] = {
    "is-set": StatusQuery,
    "is-ready": StatusQuery,
    "is-finished": InstanceQuery,
    "get-events": InstanceQuery,
    "get-instance": InstanceQuery,
}


class Reply(WireMessage):
    """Every command and query is answered with this envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    status: bool
    code: Code
    message: str
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def ok(cls, message: str, **data: Any) -> Reply:
        return cls(status=True, code=Code.SUCCESS, message=message, data=data)

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
