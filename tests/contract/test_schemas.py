"""The published contract under schemas/ matches the code and is valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from statusek import contract
from statusek.core.messages import COMMANDS, QUERIES

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
ASYNCAPI_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return loaded


def asyncapi_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))


def test_files_match_the_code() -> None:
    """schemas/ is what `statusek schemas write` generates; regenerate after changing messages."""
    assert contract.drift(SCHEMAS) == []


def test_every_command_and_query_has_a_schema_and_a_reply_schema() -> None:
    """One request and one reply schema per routing key, one per notification."""
    for key in COMMANDS:
        assert (SCHEMAS / "commands" / f"{key}.json").is_file()
        assert (SCHEMAS / "replies" / f"{key}.json").is_file()
    for key in QUERIES:
        assert (SCHEMAS / "queries" / f"{key}.json").is_file()
        assert (SCHEMAS / "replies" / f"{key}.json").is_file()
    for name in ("status-changed", "instance-finished"):
        assert (SCHEMAS / "notifications" / f"{name}.json").is_file()


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    """asyncapi.yaml validates against the official AsyncAPI 3.0.0 JSON Schema."""
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in asyncapi_validator().iter_errors(document)]
    assert errors == []


def test_asyncapi_validation_catches_a_broken_document() -> None:
    """The validator rejects a document with a misplaced binding (so the test above can fail)."""
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    document["components"]["messages"]["create-request"]["bindings"] = {"amqp": {"deliveryMode": 2}}
    assert list(asyncapi_validator().iter_errors(document))


def test_asyncapi_names_every_routing_key_and_exchange() -> None:
    """Operations carry the routing keys; channels carry the exchange names."""
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    keys = {op["bindings"]["amqp"]["cc"][0] for op in document["operations"].values() if "reply" in op}
    assert keys == set(COMMANDS) | set(QUERIES)
    addresses = {c["address"] for c in document["channels"].values()}
    assert {"statusek.commands", "statusek.queries", "statusek.events", "statusek.dead-letter"} <= addresses


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("commands/create.json", {"object_name": "2-POINT LINE TASK", "labels": {"a": "b"}}, {"labels": {}}),
        (
            "commands/set-status.json",
            {"instance_token": "6f1c2a80-0000-4000-8000-000000000001", "status_name": "STARTED"},
            {"instance_token": "6f1c2a80-0000-4000-8000-000000000001", "status": "STARTED"},
        ),
        (
            "commands/ping.json",
            {"instance_token": "6f1c2a80-0000-4000-8000-000000000001", "code": 3},
            {"code": 3},
        ),
        ("queries/get-events.json", {"instance_token": "6f1c2a80-0000-4000-8000-000000000001"}, {}),
    ],
)
def test_request_schemas_accept_good_and_refuse_bad_bodies(
    name: str, good: dict[str, Any], bad: dict[str, Any]
) -> None:
    """The JSON Schemas encode required fields and forbid unknown ones, like the worker."""
    validator = jsonschema.Draft202012Validator(schema(name), format_checker=jsonschema.FormatChecker())
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(bad))
