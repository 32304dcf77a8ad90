"""The published contract: JSON Schemas and an AsyncAPI 3.0 document, generated from code.

`statusek schemas write` regenerates `schemas/`; a test fails when the files
there differ from what this module generates, so they cannot drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from statusek import __version__
from statusek.core.codes import Code, FinishReason
from statusek.core.messages import (
    COMMANDS,
    DEADLINE_HEADER,
    QUERIES,
    REPLY_DATA,
    GlobalStatus,
    InstanceFinished,
    InvalidData,
    Reply,
    StatusChanged,
    WireMessage,
)
from statusek.core.partitions import INSTANCE_TOKEN_HEADER

NOTIFICATIONS: dict[str, type[WireMessage]] = {
    "status-changed": StatusChanged,
    "instance-finished": InstanceFinished,
    "global-status": GlobalStatus,
}
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _titled(schema: dict[str, Any], title: str, description: str) -> dict[str, Any]:
    return {"$schema": SCHEMA_DIALECT, "title": title, "description": description, **schema}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, one per command, query, reply and notification."""
    out: dict[str, dict[str, Any]] = {}
    for key, model in COMMANDS.items():
        out[f"commands/{key}.json"] = _titled(
            model.model_json_schema(), key, f"Body of the `{key}` command (routing key `{key}`)."
        )
    for key, model in QUERIES.items():
        out[f"queries/{key}.json"] = _titled(
            model.model_json_schema(), key, f"Body of the `{key}` query (routing key `{key}`)."
        )
    for key, model in REPLY_DATA.items():
        out[f"replies/{key}.json"] = _titled(
            _reply_schema(model), f"{key} reply", f"Reply to `{key}`; `data` is filled when `status` is true."
        )
    for key, model in NOTIFICATIONS.items():
        out[f"notifications/{key}.json"] = _titled(
            model.model_json_schema(), key, f"Notification `{key}` on the `statusek.events` exchange."
        )
    return out


def _reply_schema(data: type[BaseModel]) -> dict[str, Any]:
    """The reply envelope with `data` typed for one routing key (or failure data)."""
    envelope = Reply.model_json_schema()
    data_schema = data.model_json_schema()
    defs = {**envelope.pop("$defs", {}), **data_schema.pop("$defs", {})}
    invalid = InvalidData.model_json_schema()
    envelope["properties"]["data"] = {
        "anyOf": [
            data_schema,
            invalid,
            {"type": "object", "description": "Empty on a rule rejection."},
        ]
    }
    if defs:
        envelope["$defs"] = defs
    return envelope


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the wire contract (SPEC section 4)."""
    every: set[type[BaseModel]] = {
        *COMMANDS.values(),
        *QUERIES.values(),
        *REPLY_DATA.values(),
        *NOTIFICATIONS.values(),
        Reply,
        InvalidData,
    }
    models = sorted(every, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(sorted(top.get("$defs", {}).items()))

    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    ref = "#/components/schemas/{}".format

    def exchange_channel(name: str, kind: str, description: str) -> dict[str, Any]:
        return {
            "address": name,
            "description": description,
            "messages": {},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": name,
                        "type": kind,
                        "durable": True,
                        "autoDelete": False,
                        "vhost": "/",
                    },
                    "bindingVersion": "0.3.0",
                }
            },
        }

    channels["commands"] = exchange_channel(
        "statusek.commands",
        "direct",
        "State-changing commands. The routing key names the command. With one partition (the default)"
        " the exchange feeds the quorum queue `statusek.commands` (single active consumer); with"
        " STATUSEK_COMMAND_PARTITIONS=P it feeds the consistent-hash exchange `statusek.commands.partitions`,"
        " which spreads commands over the quorum queues `statusek.commands`, `statusek.commands.1` ..."
        " `statusek.commands.<P-1>` by the hash of the `instance_token` header. Commands without the"
        " header all go to one partition.",
    )
    channels["queries"] = exchange_channel(
        "statusek.queries",
        "direct",
        "Read-only queries, answered on `reply_to`. The routing key names the query.",
    )
    channels["events"] = exchange_channel(
        "statusek.events", "fanout", "Notifications; subscribers bind their own queues."
    )
    channels["reply"] = {
        "address": None,
        "description": "The sender's `reply_to` queue (or `amq.rabbitmq.reply-to`), through the default"
        " exchange, with the request's `correlation_id`.",
        "messages": {},
    }
    for queue, description in (
        ("statusek.dead-letter", "Deliveries that cannot be processed, with `x-statusek-reason` in headers."),
        ("statusek.rejected", "Rule rejections of commands without `reply_to`, with `x-statusek-code`."),
    ):
        channels[queue.split(".")[1].replace("-", "_")] = {
            "address": queue,
            "description": description,
            "messages": {},
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {"name": queue, "durable": True, "exclusive": False, "autoDelete": False},
                    "bindingVersion": "0.3.0",
                }
            },
        }

    deadline_header = {
        DEADLINE_HEADER: {
            "type": "string",
            "format": "date-time",
            "description": "Optional absolute deadline, ISO 8601 with its UTC offset (or seconds since the"
            " epoch). A command a worker takes after it, by the database clock, is refused with"
            " `EXPIRED` and not applied (nor recorded: a retry with the same message_id applies). The"
            " client sets it a little before its own timeout.",
        }
    }

    def request(channel: str, key: str, model: type[BaseModel]) -> None:
        name = f"{key}-request"
        partition_header = {
            "headers": {
                "type": "object",
                "properties": {
                    **(
                        {}
                        if key == "set-global-status"
                        else {
                            INSTANCE_TOKEN_HEADER: {
                                "type": "string",
                                "format": "uuid",
                                "description": "The body's instance_token. Set it on every command of an"
                                " instance to keep them in order when commands have several partitions; the"
                                " client and the CLI always do.",
                            }
                        }
                    ),
                    **deadline_header,
                },
            }
        }
        messages[name] = {
            "name": key,
            "title": f"{key} request",
            "contentType": "application/json",
            "payload": {"$ref": ref(model.__name__)},
            **(partition_header if channel == "commands" else {}),
            "correlationId": {"location": "$message.header#/correlation_id"},
            "description": (
                "The AMQP property `user_id` names the sender (RabbitMQ refuses one that is not the "
                "connection's user); without it the sender is `anonymous`. The model's `writers` "
                "decide what the sender may do (`NOT_ALLOWED` otherwise); `is-ready` answers for them."
                + (
                    " A command's `message_id` is scoped by its sender: a repeat of the same command"
                    " (routing key and body) with it gets the first reply and no new effect; a different"
                    " command with a `message_id` its sender used before is refused with"
                    " `MESSAGE_ID_REUSED` and not applied."
                    if channel == "commands"
                    else ""
                )
            ),
        }
        reply_name = f"{key}-reply"
        messages[reply_name] = {
            "name": f"{key}-reply",
            "title": f"{key} reply",
            "contentType": "application/json",
            "payload": {"$ref": ref(Reply.__name__)},
            "description": f"`data` follows `{REPLY_DATA[key].__name__}` when `status` is true.",
            "correlationId": {"location": "$message.header#/correlation_id"},
        }
        channels[channel]["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        channels["reply"]["messages"][reply_name] = {"$ref": f"#/components/messages/{reply_name}"}
        operations[key] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": (model.__doc__ or key).strip().splitlines()[0],
            "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}],
            "bindings": {"amqp": {"cc": [key], "bindingVersion": "0.3.0"}},
            "reply": {
                "address": {"location": "$message.header#/reply_to"},
                "channel": {"$ref": "#/channels/reply"},
                "messages": [{"$ref": f"#/channels/reply/messages/{reply_name}"}],
            },
        }

    for key, model in COMMANDS.items():
        request("commands", key, model)
    for key, model in QUERIES.items():
        request("queries", key, model)
    for key, model in NOTIFICATIONS.items():
        if key == "global-status":
            headers: dict[str, Any] = {
                "type": "object",
                "properties": {"status_name": {"type": "string"}},
                "required": ["status_name"],
            }
            message_id = "`global:<seq>`"
        else:
            headers = {
                "type": "object",
                "properties": {
                    "object_name": {"type": "string"},
                    "instance_token": {"type": "string", "format": "uuid"},
                    "status_name": {"type": "string"},
                    "reason": {"type": "string", "enum": [r.value for r in FinishReason]},
                },
                "required": ["object_name", "instance_token"],
            }
            message_id = "`<instance_token>:<seq>`"
        messages[key] = {
            "name": key,
            "title": key,
            "contentType": "application/json",
            "payload": {"$ref": ref(model.__name__)},
            "headers": headers,
            "description": f"AMQP properties: `type` = the event name, `message_id` = {message_id}"
            " (stable when re-sent), persistent.",
            "bindings": {"amqp": {"messageType": key, "bindingVersion": "0.3.0"}},
        }
        channels["events"]["messages"][key] = {"$ref": f"#/components/messages/{key}"}
    operations["publish-notifications"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/events"},
        "summary": "statusek announces status changes, finished instances and global statuses.",
        "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": "0.3.0"}},
        "messages": [{"$ref": f"#/channels/events/messages/{k}"} for k in NOTIFICATIONS],
    }
    for queue in ("dead_letter", "rejected"):
        messages[f"parked-{queue}"] = {
            "name": f"parked-{queue}",
            "title": f"Copy of a command or query parked in statusek.{queue.replace('_', '-')}",
            "payload": {"description": "The original body, unchanged."},
            "headers": {
                "type": "object",
                "properties": {
                    "x-statusek-reason": {
                        "type": "string",
                        "enum": ["invalid-json", "schema-violation", "unknown-routing-key", "too-large"],
                    },
                    "x-statusek-detail": {"type": "string"},
                    "x-statusek-code": {"type": "string", "enum": [c.value for c in Code]},
                    "x-statusek-message": {"type": "string"},
                    "x-routing-key": {"type": "string"},
                },
            },
        }
        channels[queue]["messages"][f"parked-{queue}"] = {"$ref": f"#/components/messages/parked-{queue}"}
        operations[f"park-{queue.replace('_', '-')}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{queue}"},
            "messages": [{"$ref": f"#/channels/{queue}/messages/parked-{queue}"}],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "statusek",
            "version": __version__,
            "description": "Status tracking over AMQP 0-9-1: commands, queries and notifications."
            " Every command can be published with just a routing key and a JSON body.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "Names live in the vhost of STATUSEK_AMQP_URL.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> dict[str, str]:
    """Relative path -> file content for everything under `schemas/`."""
    files = {
        name: json.dumps(schema, indent=2, sort_keys=False) + "\n" for name, schema in json_schemas().items()
    }
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100)
    return files


def write(folder: Path) -> list[Path]:
    written = []
    for name, content in render().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def drift(folder: Path) -> list[str]:
    """Files under `folder` that differ from the generated contract (or are missing)."""
    return [name for name, content in render().items() if _read(folder / name) != content]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
