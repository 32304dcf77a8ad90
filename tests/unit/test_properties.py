"""`Properties.marshal` writes exactly the bytes of pamqp's `Basic.Properties.marshal`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pamqp import commands, header

from statusek.adapters.rabbitmq.properties import Properties

NOTIFICATION: dict[str, Any] = {
    "content_type": "application/json",
    "message_type": "instance-finished",
    "message_id": "5f0c3b1e9d2a4c7b8e6f1a2b3c4d5e6f",
    "headers": {
        "object_name": "2-POINT LINE TASK",
        "instance_token": "0d7f2c1e-3b4a-4c5d-8e9f-a0b1c2d3e4f5",
        "reason": "ALL_MANDATORY_STATUSES_ARE_SET",
    },
    "delivery_mode": 2,
    "priority": 0,
}
REPLY: dict[str, Any] = {
    "content_type": "application/json",
    "correlation_id": "c-1",
    "message_type": "reply",
    "headers": {},
    "delivery_mode": 1,
    "priority": 0,
}
CASES: dict[str, dict[str, Any]] = {
    "notification": NOTIFICATION,
    "reply": REPLY,
    "nothing set": {},
    "every property": {
        **NOTIFICATION,
        "content_encoding": "utf-8",
        "correlation_id": "c-2",
        "reply_to": "amq.rabbitmq.reply-to.g1h2",
        "expiration": "60000",
        "timestamp": datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC),
        "user_id": "orders",
        "app_id": "statusek",
    },
    "unicode": {"headers": {"object_name": "задача ✓"}, "message_type": "status-changed ✓"},
    "header values of other types": {
        "headers": {"seq": 3, "big": 2**40, "ok": True, "nested": {"a": "b"}, "none": None, "list": [1, "x"]}
    },
    "a header name over 128 bytes, cut": {"headers": {"k" * 200: "v"}},
    "empty strings left out": {"content_type": "", "message_id": "", "headers": {"k": ""}},
}


@pytest.mark.parametrize("fields", CASES.values(), ids=CASES.keys())
def test_marshal_matches_pamqp_byte_for_byte(fields: dict[str, Any]) -> None:
    """The same properties give the same bytes as pamqp's own encoder."""
    assert Properties(**fields).marshal() == commands.Basic.Properties(**fields).marshal()


def test_a_content_header_with_them_decodes_to_the_same_properties() -> None:
    """pamqp reads a content header carrying them back as the properties given."""
    encoded = header.ContentHeader(0, 12, Properties(**NOTIFICATION)).marshal()
    decoded = header.ContentHeader()
    decoded.unmarshal(encoded)
    assert decoded.properties == commands.Basic.Properties(**NOTIFICATION)


@pytest.mark.parametrize(
    "fields",
    [{"message_id": "x" * 256}, {"priority": 256}, {"content_type": b"bytes"}, {"headers": {1: "one"}}],
    ids=["short string over 255 bytes", "octet over 255", "bytes for a string", "a header name not text"],
)
def test_what_pamqp_refuses_is_refused_the_same_way(fields: dict[str, Any]) -> None:
    """A value pamqp cannot encode raises pamqp's error here too."""
    with pytest.raises(Exception) as ours:
        Properties(**fields).marshal()
    with pytest.raises(Exception) as theirs:
        commands.Basic.Properties(**fields).marshal()
    assert type(ours.value) is type(theirs.value)
