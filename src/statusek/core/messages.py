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
    """`data` of a successful `set-status` or `cancel` reply: an empty object."""


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


class InvalidData(WireMessage):
    """`data` of an INVALID_MESSAGE reply."""

    reason: Literal["invalid-json", "schema-violation", "unknown-routing-key", "too-large"]


REPLY_DATA: dict[str, type[WireMessage]] = {
    "create": CreatedData,
    "set-status": NoData,
    "ping": PingData,
    "cancel": NoData,
    "is-set": IsSetData,
    "is-ready": IsReadyData,
    "is-finished": IsFinishedData,
    "get-events": EventsData,
    "get-instance": InstanceView,
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
