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

    def detached(self) -> InvalidMessage:
        """The same verdict without traceback or chained errors, to keep after its except block.

        A caught error kept in a list of the frame that caught it is a reference cycle: its
        traceback (or a chained error's) reaches that frame, whose locals reach the list. Only a
        full garbage collection frees such a cycle, and with it every body the frame could reach.
        """
        return InvalidMessage(self.reason, self.detail)


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
