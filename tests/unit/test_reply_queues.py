"""Which reply_to a reply may go to: the sender's own reply queues, and named ones the operator admits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from statusek.adapters.rabbitmq.settle import reply_queue_allowed
from statusek.settings import Settings


@pytest.mark.parametrize(
    "queue",
    ["amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAB", "amq.gen-JzTY20BRgKO"],
)
def test_queues_the_sender_made_for_itself_are_allowed(queue: str) -> None:
    """Direct reply-to and server-named queues take replies with no setting."""
    assert reply_queue_allowed(queue, None)


@pytest.mark.parametrize(
    "queue", ["statusek.commands", "billing.invoices", "amq.rabbitmq.reply-tox", "amq.genx", ""]
)
def test_named_queues_are_refused_without_a_pattern(queue: str) -> None:
    """A durable queue of another service (or of statusek) takes no reply by default."""
    assert not reply_queue_allowed(queue, None)


def test_the_pattern_admits_whole_names_only() -> None:
    """The pattern must match the whole name: a prefix match would admit `replies.x.evil.queue`."""
    pattern = r"replies\.[0-9a-f]{8}"
    assert reply_queue_allowed("replies.0123abcd", pattern)
    assert not reply_queue_allowed("replies.0123abcd.other", pattern)
    assert not reply_queue_allowed("billing.invoices", pattern)


def test_a_pattern_that_does_not_compile_is_refused_at_start() -> None:
    """STATUSEK_REPLY_QUEUE_PATTERN is checked with the other settings, not at the first reply."""
    with pytest.raises(ValidationError, match="reply_queue_pattern"):
        Settings(reply_queue_pattern="replies.(")
    assert Settings(reply_queue_pattern="").reply_queue_pattern is None
