"""Errors grouped by the action they trigger, not by where they come from.

The pipeline settles every delivery in one place by these classes:
`InvalidMessage` is dead-lettered and never retried, `TransientError` is
retried later and never dropped. Rule rejections are not errors at all: they
are replies (see `statusek.core.rules`).
"""

from __future__ import annotations


class StatusekError(Exception):
    """Base of every error statusek raises on purpose."""


class InvalidMessage(StatusekError):
    """The input can never be processed: retrying would fail the same way."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason  # short, stable: for headers, metrics and alerting
        self.detail = detail  # human text naming the bad field
        super().__init__(f"{reason}: {detail}")


class TransientError(StatusekError):
    """A dependency is unavailable for now; the same work will succeed later."""


class StoreUnavailable(TransientError):
    """Postgres cannot be reached or aborted the transaction for concurrency."""


class BrokerUnavailable(TransientError):
    """RabbitMQ connection or channel is gone."""


class StoreFailure(StatusekError):
    """Postgres refused the work for a reason retrying will not fix."""


class TooLargeForBroker(StatusekError):
    """RabbitMQ refused a message over its max_message_size: sending it again fails the same way."""

    def __init__(self, size: int, detail: str):
        self.size = size
        super().__init__(detail)
