"""Parsing deliveries at the edge: every failure is an InvalidMessage with a reason."""

from __future__ import annotations

import gc
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from statusek.adapters.rabbitmq.parser import Envelope, content_digest, parse, try_parse_delivery
from statusek.core.errors import InvalidMessage
from statusek.core.messages import COMMANDS, DEADLINE_HEADER, Create, SetStatus
from tests.helpers import collector_held_off

LIMIT = 64 * 1024


def parsed(body: bytes, routing_key: str | None = "create", type_property: str | None = None) -> object:
    return parse(
        routing_key=routing_key,
        type_property=type_property,
        body=body,
        message_id=None,
        reply_to=None,
        correlation_id=None,
        table=COMMANDS,
        max_body_bytes=LIMIT,
    ).body


def reason(body: bytes, routing_key: str = "create") -> str:
    with pytest.raises(InvalidMessage) as caught:
        parsed(body, routing_key)
    return caught.value.reason


def test_valid_command_becomes_a_frozen_model() -> None:
    """A good body parses into its command class, immutable."""
    body = parsed(b'{"object_name": "2-POINT LINE TASK", "labels": {"a": "b"}}')
    assert isinstance(body, Create)
    with pytest.raises(Exception, match="frozen"):
        body.object_name = "x"  # type: ignore[misc]


def test_type_property_names_the_command_when_routing_key_does_not() -> None:
    """Published straight to the queue, the `type` property picks the command."""
    body = json.dumps({"instance_token": str(uuid.uuid4()), "status_name": "A"}).encode()
    assert isinstance(parsed(body, routing_key="statusek.commands", type_property="set-status"), SetStatus)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "invalid-json"),
        (b"\xff\xfe", "invalid-json"),
        (b"[1, 2]", "schema-violation"),
        (b'{"object_name": ""}', "schema-violation"),
        (b'{"object_name": "A", "extra": 1}', "schema-violation"),
        (b'{"object_name": "A", "instance_timeout": -1}', "schema-violation"),
        (b'{"object_name": "A", "instance_token": "nope"}', "schema-violation"),
        (
            json.dumps({"object_name": "A", "labels": {str(i): "v" for i in range(33)}}).encode(),
            "schema-violation",
        ),
        (json.dumps({"object_name": "A" * 256}).encode(), "schema-violation"),
    ],
)
def test_bad_bodies_are_invalid(body: bytes, expected: str) -> None:
    """Bodies that break the contract are refused with a stable reason."""
    assert reason(body) == expected


def test_unknown_routing_key_is_invalid() -> None:
    """A routing key naming no command is refused, not ignored."""
    assert reason(b"{}", routing_key="creat") == "unknown-routing-key"


def test_body_over_the_limit_is_refused_before_parsing() -> None:
    """Bodies over the size limit are refused whatever they contain."""
    assert reason(b" " * (LIMIT + 1)) == "too-large"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"object_name": "A", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"object_name": "A", "labels": {"k": "' + b"x" * 60_000 + b'"}}',
        b'{"object_name": "A", "instance_timeout": ' + b"9" * 5_000 + b"}",
    ],
    ids=["deep-array", "deep-field", "long-string", "huge-integer"],
)
def test_hostile_payloads_are_invalid(body: bytes) -> None:
    """Deep nesting, long strings and huge numbers fail fast as invalid."""
    assert reason(body) in {"invalid-json", "schema-violation"}


def test_error_names_the_field() -> None:
    """The detail names the field that is wrong."""
    with pytest.raises(InvalidMessage) as caught:
        parsed(b'{"instance_token": "x"}', "set-status")
    assert "instance_token" in caught.value.detail and "status_name" in caught.value.detail


def digest(**changes: object) -> str:
    properties: dict[str, object] = {"correlation_id": "c1", "reply_to": None, "headers": {"h": 1}}
    properties.update(changes)
    return content_digest(
        routing_key="ping",
        exchange="statusek.commands",
        body=b'{"instance_token": "x"}',
        properties=properties,
    )


def test_digest_ignores_what_the_broker_adds_on_redelivery() -> None:
    """A redelivered message (x-delivery-count, x-death) has the digest of its first delivery."""
    assert digest(headers={"h": 1, "x-delivery-count": 3, "x-death": [{"reason": "expired"}]}) == digest()


def test_digest_tells_apart_what_the_publisher_sets() -> None:
    """Another correlation_id, header or body is another message."""
    assert digest(correlation_id="c2") != digest()
    assert digest(headers={"h": 2}) != digest()
    other_body = content_digest(routing_key="ping", exchange="statusek.commands", body=b"{}", properties={})
    assert other_body != content_digest(
        routing_key="ping", exchange="statusek.commands", body=b"", properties={}
    )


def test_envelope_carries_a_digest_only_without_message_id() -> None:
    """With a message_id the digest is not needed, and not kept."""
    common: dict[str, object] = {
        "routing_key": "create",
        "type_property": None,
        "body": b'{"object_name": "A"}',
        "reply_to": None,
        "correlation_id": None,
        "table": COMMANDS,
        "max_body_bytes": LIMIT,
        "digest": "d",
    }
    assert parse(message_id=None, **common).digest == "d"  # type: ignore[arg-type]
    assert parse(message_id="m", **common).digest is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"object_name": "A\\u0000"}', "object_name"),
        (b'{"object_name": "A", "labels": {"team": "x\\u0000y"}}', "team"),
        (b'{"object_name": "A", "labels": {"t\\u0000": "x"}}', "t\x00"),
    ],
    ids=["field", "label-value", "label-key"],
)
def test_a_nul_character_in_text_is_refused_naming_the_field(body: bytes, field: str) -> None:
    """Postgres text cannot hold U+0000: such a message is invalid, not a store failure."""
    with pytest.raises(InvalidMessage) as caught:
        parsed(body)
    assert caught.value.reason == "schema-violation"
    assert f"{field!r}: a NUL character" in caught.value.detail


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused_by_name(constant: bytes) -> None:
    """NaN and ±Infinity are not JSON numbers; the detail says which one was sent."""
    with pytest.raises(InvalidMessage) as caught:
        parsed(b'{"object_name": "A", "instance_timeout": ' + constant + b"}")
    assert caught.value.reason == "schema-violation"
    assert constant.decode() in caught.value.detail


def test_duplicate_keys_are_refused() -> None:
    """A key given twice is ambiguous (parsers disagree on which wins), so it is refused."""
    with pytest.raises(InvalidMessage) as caught:
        parsed(b'{"object_name": "A", "object_name": "B"}')
    assert (caught.value.reason, caught.value.detail) == (
        "invalid-json",
        "create: key 'object_name' appears twice",
    )


def envelope(body: bytes, routing_key: str = "create", **fields: object) -> Envelope:
    return parse(
        routing_key=routing_key,
        type_property=None,
        body=body,
        message_id=str(fields.pop("message_id", "m-1")),
        reply_to=None,
        correlation_id=None,
        table=COMMANDS,
        max_body_bytes=LIMIT,
        **fields,  # type: ignore[arg-type]
    )


def test_fingerprint_ignores_key_order_and_spacing() -> None:
    """Two serialisations of one command have one fingerprint."""
    a = envelope(b'{"object_name": "X", "labels": {"a": "1", "b": "2"}}')
    b = envelope(b'{"labels":{"b":"2","a":"1"},"object_name":"X"}')
    assert a.fingerprint == b.fingerprint


def test_fingerprint_differs_by_body_and_routing_key() -> None:
    """Another body or another routing key is another command."""
    token = str(uuid.uuid4())
    create = envelope(f'{{"object_name": "X", "instance_token": "{token}"}}'.encode())
    other = envelope(b'{"object_name": "Y"}')
    cancel = envelope(f'{{"instance_token": "{token}"}}'.encode(), "cancel")
    assert len({create.fingerprint, other.fingerprint, cancel.fingerprint}) == 3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T04:04:05+01:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1_893_553_445, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (None, None),
    ],
)
def test_deadline_header_is_an_absolute_time(header: object, expected: datetime | None) -> None:
    """x-statusek-deadline reads ISO 8601 with an offset or epoch seconds."""
    headers = {} if header is None else {DEADLINE_HEADER: header}
    assert envelope(b'{"object_name": "X"}', headers=headers).deadline == expected


@pytest.mark.parametrize("header", ["2030-01-02T03:04:05", "tomorrow", True, [1]])
def test_a_deadline_that_is_no_absolute_time_is_refused(header: object) -> None:
    """A naive, unreadable or non-time deadline is a schema violation naming the header."""
    with pytest.raises(InvalidMessage, match=DEADLINE_HEADER) as caught:
        envelope(b'{"object_name": "X"}', headers={DEADLINE_HEADER: header})
    assert caught.value.reason == "schema-violation"


def test_a_nul_in_message_id_is_refused() -> None:
    """Postgres text cannot hold NUL: message_id with one is refused at the edge."""
    with pytest.raises(InvalidMessage, match="message_id"):
        envelope(b'{"object_name": "X"}', message_id="a\x00b")


@dataclass
class Delivery:
    """The fields of an aio-pika delivery that parsing reads."""

    body: bytes
    routing_key: str = "create"
    content_encoding: str | None = None
    type: str | None = None
    message_id: str | None = "m-1"
    reply_to: str | None = None
    correlation_id: str | None = None
    user_id: str | None = None
    headers: dict[str, object] = field(default_factory=dict)


HOSTILE = [
    Delivery(b"[" * 10_000 + b"]" * 10_000),
    Delivery(b'{"instance_token": "%s", "code": %s}' % (str(uuid.uuid4()).encode(), b"9" * 5_000), "ping"),
    Delivery(b'{"object_name": "' + b"x" * 60_000 + b'"}'),
    Delivery(b'{"object_name": "X"}', content_encoding="gzip"),
]


def test_a_refusal_keeps_its_reason_and_detail_without_traceback() -> None:
    """try_parse_delivery returns the refusal, detached from the frames that raised it."""
    refusal = try_parse_delivery(HOSTILE[2], COMMANDS, LIMIT)  # type: ignore[arg-type]
    assert isinstance(refusal, InvalidMessage)
    assert (refusal.reason, refusal.detail[:12]) == ("schema-violation", "create: obje")
    assert (refusal.__traceback__, refusal.__context__, refusal.__cause__) == (None, None, None)


def window_parsed(deliveries: list[Delivery]) -> list[tuple[Delivery, Envelope | InvalidMessage]]:
    """As the pipeline parses a window: a refusal kept in a local of the frame that asked for it."""
    kept = []
    for d in deliveries:
        kept.append((d, try_parse_delivery(d, COMMANDS, LIMIT)))  # type: ignore[arg-type]
    return kept


def test_refusals_kept_beside_their_deliveries_leave_no_garbage_cycle() -> None:
    """A window's refusals kept in a list are freed with it, not by the garbage collector."""
    with collector_held_off():
        gc.collect()
        kept = window_parsed(HOSTILE)
        assert all(isinstance(refusal, InvalidMessage) for _, refusal in kept)
        del kept
        assert gc.collect() == 0
