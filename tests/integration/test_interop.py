"""Another client library (pika), guided only by schemas/: the contract is enough."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pika
import yaml

from statusek.worker.worker import Worker

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DOC = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def route(operation: str) -> tuple[str, str]:
    """(exchange, routing key) of an operation, read from the AsyncAPI document."""
    op = DOC["operations"][operation]
    channel = DOC["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]
    return channel["address"], op["bindings"]["amqp"]["cc"][0]


def events_exchange() -> str:
    op = DOC["operations"]["publish-notifications"]
    return str(DOC["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"])


def converse(url: str) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """Create an instance and finish it with pika; return replies and notifications seen."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    replies = channel.queue_declare("", exclusive=True).method.queue
    events = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(events, events_exchange())
    token = str(uuid.uuid4())
    requests = [
        ("create", {"object_name": "2-POINT LINE TASK", "instance_token": token}),
        ("set-status", {"instance_token": token, "status_name": "STARTED"}),
        ("set-status", {"instance_token": token, "status_name": "FINISHED"}),
        ("get-events", {"instance_token": token}),
    ]
    answers: list[dict[str, Any]] = []
    for operation, body in requests:
        folder = "commands" if operation in ("create", "set-status") else "queries"
        validator(f"{folder}/{operation}.json").validate(body)
        exchange, routing_key = route(operation)
        correlation_id = uuid.uuid4().hex
        channel.basic_publish(
            exchange,
            routing_key,
            json.dumps(body).encode(),
            pika.BasicProperties(reply_to=replies, correlation_id=correlation_id, delivery_mode=2),
        )
        for method, properties, payload in channel.consume(replies, auto_ack=True, inactivity_timeout=10):
            assert method is not None, f"no reply to {operation}"
            if properties.correlation_id == correlation_id:
                reply = json.loads(payload)
                validator(f"replies/{operation}.json").validate(reply)
                answers.append(reply)
                break
        channel.cancel()
    seen: list[tuple[str, dict[str, Any]]] = []
    token = answers[0]["data"]["instance_token"]
    for method, properties, payload in channel.consume(events, auto_ack=True, inactivity_timeout=10):
        assert method is not None, "notifications did not arrive"
        body = json.loads(payload)
        validator(f"notifications/{properties.type}.json").validate(body)
        if body.get("instance_token") != token:
            continue  # another test's instance in the session's vhost (a sweeper finishing it)
        seen.append((properties.type, body))
        if properties.type == "instance-finished":
            break
    channel.cancel()
    connection.close()
    return answers, seen


async def test_pika_client_built_from_the_contract_interoperates(worker: Worker, amqp_url: str) -> None:
    """pika publishes per the AsyncAPI routes; every reply and notification matches its schema."""
    answers, seen = await asyncio.to_thread(converse, amqp_url)
    assert [a["code"] for a in answers] == ["SUCCESS"] * 4
    assert [e["kind"] for e in answers[3]["data"]["events"]] == ["created", "status", "status", "finished"]
    assert [kind for kind, _ in seen] == ["status-changed", "status-changed", "instance-finished"]
    assert seen[-1][1]["reason"] == "ALL_MANDATORY_STATUSES_ARE_SET"
