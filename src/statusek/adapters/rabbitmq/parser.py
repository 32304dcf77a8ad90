"""Turn a delivery into a frozen, validated envelope before anything else sees it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, ConfigDict, SerializeAsAny, ValidationError

from statusek.core.errors import InvalidMessage
from statusek.core.messages import DEADLINE_HEADER, WireMessage


class Envelope(BaseModel):
    """A parsed delivery: what to do, with what, and where to answer."""

    model_config = ConfigDict(frozen=True)

    kind: str
    body: SerializeAsAny[WireMessage]
    message_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    # The sender, as RabbitMQ validated it against the publishing connection's user.
    user_id: str | None = None
    # Without a message_id: a digest of the delivery's content (see `delivery_digest`).
    digest: str | None = None
    # What the command does (`command_fingerprint`): a message_id reused for another command differs.
    fingerprint: str = ""
    # The sender's absolute deadline (header `x-statusek-deadline`): not applied once it has passed.
    deadline: datetime | None = None


def command_fingerprint(kind: str, message: WireMessage) -> str:
    """The routing key and the parsed body, canonical: equal for a repeat however it was serialised."""
    canonical = json.dumps(message.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{kind}\n{canonical}".encode()).hexdigest()


def parse_deadline(value: object) -> datetime | None:
    """The `x-statusek-deadline` header: an ISO 8601 time with its offset, or seconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            parsed = datetime.fromtimestamp(value).astimezone()
        except (OverflowError, OSError, ValueError):
            raise InvalidMessage(
                "schema-violation", f"header {DEADLINE_HEADER}: {value!r} is not a time"
            ) from None
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidMessage(
                "schema-violation",
                f"header {DEADLINE_HEADER}: {value!r} is not an ISO 8601 time (e.g. 2026-12-05T10:00:00Z)",
            ) from None
    else:
        raise InvalidMessage(
            "schema-violation", f"header {DEADLINE_HEADER}: a {type(value).__name__} is not a time"
        )
    if parsed.tzinfo is None:
        # A time without its offset means different instants to the sender and the worker.
        raise InvalidMessage(
            "schema-violation", f"header {DEADLINE_HEADER}: {value!r} has no UTC offset (add Z or +00:00)"
        )
    return parsed


def parse(
    *,
    routing_key: str | None,
    type_property: str | None,
    body: bytes,
    message_id: str | None,
    reply_to: str | None,
    correlation_id: str | None,
    table: dict[str, type[WireMessage]],
    max_body_bytes: int,
    digest: str | None = None,
    user_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Envelope:
    """Validate a raw delivery against the contract, or raise InvalidMessage.

    The routing key picks the message kind; the `type` property may carry it
    instead (for messages published straight to the queue). `content_type`
    is ignored on purpose: the management UI sends none.
    """
    kind = routing_key if routing_key in table else type_property
    if kind not in table:
        known = ", ".join(table)
        raise InvalidMessage(
            "unknown-routing-key",
            f"routing key {routing_key!r} (type {type_property!r}) names no message; expected one of {known}",
        )
    if len(body) > max_body_bytes:
        raise InvalidMessage("too-large", f"body is {len(body)} bytes, the limit is {max_body_bytes}")
    for name, value in (("message_id", message_id), ("user_id", user_id)):
        if value and "\x00" in value:
            # Postgres text cannot hold it: refused here, not by the store a window later.
            raise InvalidMessage("schema-violation", f"{name}: a NUL character is not allowed")
    deadline = parse_deadline((headers or {}).get(DEADLINE_HEADER))
    _refuse_what_json_allows(kind, body)
    try:
        message = table[kind].model_validate_json(body)
    except ValidationError as e:
        raise _invalid(kind, e) from None
    return Envelope(
        kind=kind,
        body=message,
        message_id=message_id or None,
        reply_to=reply_to or None,
        correlation_id=correlation_id or None,
        user_id=user_id or None,
        digest=None if message_id else digest,
        fingerprint=command_fingerprint(kind, message),
        deadline=deadline,
    )


# Headers the broker adds or changes on a redelivery or a dead-lettering: not the publisher's.
_BROKER_HEADERS = {"x-delivery-count", "x-death", "x-first-death-exchange", "x-first-death-queue"}
_BROKER_HEADERS |= {"x-first-death-reason", "x-last-death-exchange", "x-last-death-queue"}
_BROKER_HEADERS |= {"x-last-death-reason"}


def content_digest(
    *, routing_key: str | None, exchange: str | None, body: bytes, properties: Mapping[str, Any]
) -> str:
    """What the publisher sent, as a SHA-256: the same on every redelivery of one message.

    Routing key, exchange, body and the publisher's properties (correlation_id
    and reply_to, which RPC callers make unique, timestamp, type, app_id,
    user_id and headers), but not the headers the broker adds when it
    delivers again. Two messages identical in all of these have one digest.
    """
    publisher = {k: v for k, v in properties.items() if k != "headers"}
    headers = {k: v for k, v in (properties.get("headers") or {}).items() if k not in _BROKER_HEADERS}
    described = {"routing_key": routing_key, "exchange": exchange, **publisher, "headers": headers}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode())
    digest.update(body)
    return digest.hexdigest()


def delivery_digest(delivery: AbstractIncomingMessage) -> str:
    """`content_digest` of an aio-pika delivery."""
    return content_digest(
        routing_key=delivery.routing_key,
        exchange=delivery.exchange,
        body=delivery.body,
        properties={
            "correlation_id": delivery.correlation_id,
            "reply_to": delivery.reply_to,
            "timestamp": delivery.timestamp.isoformat() if delivery.timestamp else None,
            "type": delivery.type,
            "app_id": delivery.app_id,
            "user_id": delivery.user_id,
            "headers": dict(delivery.headers or {}),
        },
    )


class _Refused(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _refuse_what_json_allows(kind: str, body: bytes) -> None:
    """Refuse what JSON parsers let through but statusek must not store.

    Duplicate keys (which one wins differs between parsers), NaN and
    Infinity (not JSON at all, but accepted by many parsers), and NUL
    characters in strings (Postgres text cannot hold them). Bodies that are
    not JSON at all are left to the schema's parser, whose message is better.
    """

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise _Refused("invalid-json", f"key {key!r} appears twice")
            texts = [key, value] if not isinstance(value, list) else [key, *value]
            if any(isinstance(text, str) and "\x00" in text for text in texts):
                raise _Refused(
                    "schema-violation", f"{key!r}: a NUL character (\\u0000) is not allowed in text"
                )
            seen[key] = value
        return seen

    def constant(name: str) -> Any:
        raise _Refused("schema-violation", f"{name} is not a number statusek accepts (JSON has no {name})")

    try:
        json.loads(body, object_pairs_hook=pairs, parse_constant=constant)
    except _Refused as e:
        raise InvalidMessage(e.reason, f"{kind}: {e}") from None
    except (ValueError, RecursionError):
        return


def _invalid(kind: str, error: ValidationError) -> InvalidMessage:
    problems = error.errors(include_url=False, include_input=False)
    if any(p["type"] == "json_invalid" for p in problems):
        return InvalidMessage("invalid-json", f"{kind}: body is not valid JSON: {problems[0]['msg']}")
    details = "; ".join(
        f"{'.'.join(str(part) for part in p['loc']) or '<body>'}: {p['msg']}" for p in problems[:5]
    )
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return InvalidMessage("schema-violation", f"{kind}: {details}{more}")


# A body is read as UTF-8 JSON; an encoding that would have to be undone first is refused.
_PLAIN_ENCODINGS = frozenset({"", "utf-8", "utf8", "identity"})


def parse_delivery(
    delivery: AbstractIncomingMessage, table: dict[str, type[WireMessage]], max_body_bytes: int
) -> Envelope:
    """`parse` applied to an aio-pika delivery."""
    encoding = (delivery.content_encoding or "").lower()
    if encoding not in _PLAIN_ENCODINGS:
        raise InvalidMessage(
            "invalid-json",
            f"content_encoding {delivery.content_encoding!r} is not supported: send plain UTF-8 JSON",
        )
    return parse(
        routing_key=delivery.routing_key,
        type_property=delivery.type,
        body=delivery.body,
        message_id=delivery.message_id,
        reply_to=delivery.reply_to,
        correlation_id=delivery.correlation_id,
        table=table,
        max_body_bytes=max_body_bytes,
        digest=None if delivery.message_id else delivery_digest(delivery),
        user_id=delivery.user_id,
        headers=delivery.headers,
    )


def try_parse_delivery(
    delivery: AbstractIncomingMessage, table: dict[str, type[WireMessage]], max_body_bytes: int
) -> Envelope | InvalidMessage:
    """`parse_delivery`, with a refusal returned instead of raised, safe to keep in a list.

    The refusal returned is a new one, with no traceback and no chained error: as raised, its
    traceback reaches the caller's frame, and a caller that keeps it beside its other locals (the
    window) builds a reference cycle that only a full garbage collection frees, bodies and all
    (a CI run of 10,000 hostile bodies held 85 MB that way).
    """
    try:
        return parse_delivery(delivery, table, max_body_bytes)
    except InvalidMessage as e:
        return InvalidMessage(e.reason, e.detail)
