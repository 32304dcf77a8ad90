"""Test-only fault hooks of the command pipeline, on with STATUSEK_FAULT_HOOKS=true.

A command carrying the `x-statusek-test-fault` header makes its window fail, stall or die at
the point the value names, so that the fault tests (tests/integration) can see what a failure
there leaves behind:

    fail-window           the whole window fails, every time the command is delivered (a poison)
    stall-before-commit   the transaction stays open STALL_SECONDS longer (first delivery only)
    crash-after-commit    the process exits after commit, before publishing, replying and acking
                          (when its window decided the command, not when it answered a repeat)
    crash-before-publish  the same point, named for the notifications

The pipeline calls these only when the setting is on; off, the header is ignored.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

import structlog
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.rabbitmq.parser import Envelope

log = structlog.get_logger(__name__)

FAULT_HEADER = "x-statusek-test-fault"


def fail_if_asked(deliveries: Sequence[AbstractIncomingMessage]) -> None:
    """Test-only: a poison command, failing its whole window every time it is delivered."""
    for delivery in deliveries:
        if (delivery.headers or {}).get(FAULT_HEADER) == "fail-window":
            raise RuntimeError(f"fault hook: window with {delivery.message_id} fails")


STALL_SECONDS = 1.5


async def stall_if_asked(valid: list[tuple[AbstractIncomingMessage, Envelope]]) -> None:
    """Test-only: hold the window's transaction open, as a starved replica would, on first delivery."""
    for delivery, _ in valid:
        if (delivery.headers or {}).get(FAULT_HEADER) == "stall-before-commit" and not delivery.redelivered:
            log.warning("fault hook: stalling before commit", message_id=delivery.message_id)
            await asyncio.sleep(STALL_SECONDS)
            return


def crash_if_asked(outcomes: Sequence[tuple[AbstractIncomingMessage, bool]]) -> None:
    """Test-only: die after commit, before publishing, answering and acking, as a power cut would.

    Only when this window decided the command (`True` beside its delivery), not when it answered
    a repeat from the record or refused an expired one: a delivery a hand-over gave back
    unprocessed still crashes once, and the redelivery after the crash does not.
    `crash-before-publish` is the same point, named for the notifications.
    """
    for delivery, decided in outcomes:
        fault = (delivery.headers or {}).get(FAULT_HEADER)
        if fault in ("crash-after-commit", "crash-before-publish") and decided:
            log.warning("fault hook: exiting between commit and ack", message_id=delivery.message_id)
            os._exit(70)
