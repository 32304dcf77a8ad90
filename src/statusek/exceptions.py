"""Everything `statusek.Client` raises on purpose, importable without aio-pika.

    from statusek import InstanceFinishedError, NoAnswerError

`StatusekClientError` is the base of them all. A refusal by statusek is a
`StatusekRejected` (one subclass per family of reply codes); the others say
why no answer came: nobody answered in time (`NoAnswerError`, a
`TimeoutError`), the broker cannot be reached or is not statusek's
(`BrokerUnreachable`, a `ConnectionError`), or a finish did not come in time
(`WaitTimeoutError`, a `TimeoutError`).
"""

from __future__ import annotations

from typing import Any

from statusek.core.codes import Code


class StatusekClientError(Exception):
    """Base of every exception the client raises on purpose."""


class StatusekRejected(StatusekClientError):
    """The worker answered with a code other than SUCCESS."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None):
        self.code = code
        self.message = message
        self.data = data or {}
        super().__init__(f"{code}: {message}")


class InstanceNotFound(StatusekRejected):
    """INSTANCE_TOKEN_IS_NOT_FOUND or OBJECT_NAME_IS_NOT_FOUND."""


class InstanceFinishedError(StatusekRejected):
    """INSTANCE_IS_FINISHED: the instance accepts no more statuses or pings."""


class StatusNotReady(StatusekRejected):
    """A status rule refused the status (checks 3 to 7 of docs/models.md, "Rules")."""


class TokenConflict(StatusekRejected):
    """INSTANCE_TOKEN_CONFLICT: the token exists, created with other arguments."""


class InvalidRequest(StatusekRejected):
    """INVALID_MESSAGE: the request broke the contract (a bug in the caller)."""


class NotAllowed(StatusekRejected):
    """NOT_ALLOWED: the model's writer lists do not name this client's user."""


class MessageIdReused(InvalidRequest):
    """MESSAGE_ID_REUSED: this client's user sent another command with that message_id before."""


_FAMILIES: dict[str, type[StatusekRejected]] = {
    Code.INSTANCE_TOKEN_IS_NOT_FOUND: InstanceNotFound,
    Code.OBJECT_NAME_IS_NOT_FOUND: InstanceNotFound,
    Code.INSTANCE_IS_FINISHED: InstanceFinishedError,
    Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT: StatusNotReady,
    Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET: StatusNotReady,
    Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET: StatusNotReady,
    Code.AT_LEAST_ONE_NEXT_STATUS_IS_SET: StatusNotReady,
    Code.STATUS_IS_ALREADY_SET: StatusNotReady,
    Code.INSTANCE_TOKEN_CONFLICT: TokenConflict,
    Code.INVALID_MESSAGE: InvalidRequest,
    Code.NOT_ALLOWED: NotAllowed,
    Code.MESSAGE_ID_REUSED: MessageIdReused,
}


def rejection(code: str, message: str, data: dict[str, Any] | None = None) -> StatusekRejected:
    """The exception for a refusal with `code`."""
    return _FAMILIES.get(code, StatusekRejected)(code, message, data)


class NoAnswerError(StatusekClientError, TimeoutError):
    """No worker answered within the time given (or one refused the request as `EXPIRED`).

    The request carried a deadline a little before that time: the broker drops
    it unconsumed past it, and a worker that takes it later refuses it. So it
    was not applied, unless a worker began applying it before its deadline and
    its answer took longer than the margin (a database stall at that moment):
    repeating a command with the same `message_id` is safe and tells which.
    """

    def __init__(self, routing_key: str, seconds: float, vhost: str):
        self.routing_key = routing_key
        self.seconds = seconds
        self.vhost = vhost
        super().__init__(
            f"no worker answered {routing_key} within {seconds:g} s on vhost {vhost!r}; "
            "its deadline has passed, so it will not be applied later"
        )


class WaitTimeoutError(StatusekClientError, TimeoutError):
    """`wait_finished`: the instance was still open when the time ran out."""

    def __init__(self, token: str, seconds: float):
        self.token = token
        self.seconds = seconds
        super().__init__(f"instance {token} did not finish within {seconds:g} s")


class BrokerUnreachable(StatusekClientError, ConnectionError):
    """RabbitMQ cannot be reached, refused the login or the vhost, or the link was lost for too long."""

    def __init__(self, message: str, *, maybe_applied: bool = False):
        # A command sent before the link was lost may have been applied; retrying is safe.
        self.maybe_applied = maybe_applied
        super().__init__(message)


class TopologyNotFound(BrokerUnreachable):
    """The vhost has no statusek exchanges: the URL names another vhost than the worker's."""

    def __init__(self, vhost: str, location: str, exchange: str):
        self.vhost = vhost
        self.location = location
        self.exchange = exchange
        super().__init__(
            f"vhost {vhost!r} on {location} has no exchange {exchange!r}: "
            "no statusek worker has ever run there (is the vhost the worker's?)"
        )


class InvalidURL(StatusekClientError, ValueError):
    """The broker URL is not an AMQP URL."""


class NotificationsInterrupted(StatusekClientError, ConnectionError):
    """The link to RabbitMQ was lost under `notifications()`: some may be missing.

    Iterate `notifications()` again to resume (it waits for the link), and
    read the state you care about with `get_instance` to fill the gap.
    """
