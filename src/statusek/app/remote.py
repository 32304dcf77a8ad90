"""CLI subcommands that drive a running worker through `statusek.Client`.

Human output by default, `--json` for scripts. Exit codes: 0 success,
1 refused by statusek (the code is printed), 2 usage, 3 no answer in time,
4 `wait`: the instance finished other than by ALL_MANDATORY_STATUSES_ARE_SET,
69 broker unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika

from statusek import graph
from statusek.adapters.model_files import load_models
from statusek.app.settings import Settings
from statusek.client import Client, StatusekRejected
from statusek.core.model import parse_model

EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_NOT_COMPLETED, EXIT_UNAVAILABLE = 0, 1, 3, 4, 69

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False), flush=True)
    else:
        print(human, flush=True)


async def cmd_create(client: Client, args: argparse.Namespace) -> int:
    labels = dict(label.split("=", 1) for label in args.label)
    token = await client.create(
        args.object_name,
        instance_token=args.token,
        instance_timeout=args.timeout,
        heartbeat_timeout=args.heartbeat,
        labels=labels,
    )
    emit(args, {"instance_token": token}, token)
    return EXIT_OK


async def cmd_set(client: Client, args: argparse.Namespace) -> int:
    await client.set_status(args.token, args.status_name, args.message)
    emit(args, {"instance_token": args.token, "status_name": args.status_name}, f"{args.status_name} is set")
    return EXIT_OK


async def cmd_ping(client: Client, args: argparse.Namespace) -> int:
    deadline = await client.ping(args.token, args.message, args.code)
    emit(args, {"deadline": deadline}, f"alive; next deadline {deadline or 'none'}")
    return EXIT_OK


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    await client.cancel(args.token, args.reason)
    emit(args, {"instance_token": args.token, "cancelled": True}, f"{args.token} is cancelled")
    return EXIT_OK


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    instance = await client.get_instance(args.token)
    events = await client.get_events(args.token)
    if args.json:
        emit(args, {"instance": instance, "events": events}, "")
        return EXIT_OK
    labels = ", ".join(f"{k}={v}" for k, v in instance["labels"].items()) or "-"
    finished = (
        f"yes: {instance['finish_reason']} at {instance['finished_at']}"
        if instance["instance_is_finished"]
        else "no"
    )
    rows = [
        ("instance", instance["instance_token"]),
        ("object", f"{instance['object_name']} (version {instance['model_version']})"),
        ("labels", labels),
        ("created", instance["created_at"]),
        ("deadline", instance["instance_deadline"] or "-"),
        ("heartbeat", instance["heartbeat_deadline"] or "-"),
        ("finished", finished),
        ("statuses", ", ".join(instance["statuses"]) or "-"),
    ]
    print("\n".join(f"{k:<10} {v}" for k, v in rows))
    print()
    print(
        table(
            ["SEQ", "KIND", "STATUS", "TYPE", "MESSAGE", "AT"],
            [
                [
                    str(e["seq"]),
                    e["kind"],
                    e["status_name"] or e["reason"] or "",
                    e["status_type"] or "",
                    e["message"] or ("" if e["code"] is None else f"code {e['code']}"),
                    e["occurred_at"],
                ]
                for e in events
            ],
        )
    )
    return EXIT_OK


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


async def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    types = set(args.type) if args.type else None
    seen = 0
    async for kind, body in client.notifications(
        object_name=args.object, instance_token=args.token, types=types
    ):
        if args.json:
            print(json.dumps({"type": kind, **body}, ensure_ascii=False), flush=True)
        else:
            what = body.get("status_name") or body.get("reason")
            print(
                f"{kind:<17} {body['instance_token']}  #{body['seq']:<3} {what}  [{body['object_name']}]",
                flush=True,
            )
        seen += 1
        if args.count and seen >= args.count:
            break
    return EXIT_OK


async def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    reason = await client.wait_finished(args.token, timeout=args.timeout)
    emit(args, {"instance_token": args.token, "reason": reason}, reason)
    return EXIT_OK if reason == "ALL_MANDATORY_STATUSES_ARE_SET" else EXIT_NOT_COMPLETED


async def cmd_graph_instance(client: Client, args: argparse.Namespace) -> int:
    instance = await client.get_instance(args.token)
    model = parse_model(instance["model"], source="get-instance", version=instance["model_version"])
    draw = graph.dot if args.format == "dot" else graph.mermaid
    print(draw(model, instance["statuses"]), end="")
    return EXIT_OK


def cmd_graph(settings: Settings, args: argparse.Namespace) -> int:
    if args.instance:
        return run_remote(settings, args, cmd_graph_instance, token_from="instance")
    if not args.object_name:
        print("statusek graph: give a model name or --instance TOKEN", file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.models] if args.models else settings.model_paths()
    models, errors = load_models(paths)
    for error in errors:
        print(f"statusek: skipped: {error}", file=sys.stderr)
    by_name = {m.object_name: m for m in models}
    if args.object_name not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        print(f"statusek: no model named {args.object_name!r} (known: {known})", file=sys.stderr)
        return EXIT_REFUSED
    draw = graph.dot if args.format == "dot" else graph.mermaid
    print(draw(by_name[args.object_name]), end="")
    return EXIT_OK


def run_remote(settings: Settings, args: argparse.Namespace, handler: Handler, token_from: str = "") -> int:
    if token_from:
        args.token = getattr(args, token_from)

    async def main() -> int:
        try:
            client = await asyncio.wait_for(Client.connect(settings.amqp_url), timeout=args.connect_timeout)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as e:
            print(f"statusek: cannot reach RabbitMQ at {settings.amqp_url}: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        async with client:
            try:
                return await handler(client, args)
            except StatusekRejected as e:
                if getattr(args, "json", False):
                    print(json.dumps({"code": e.code, "message": e.message}), flush=True)
                print(f"statusek: {e.code}: {e.message}", file=sys.stderr)
                return EXIT_REFUSED
            except TimeoutError:
                print("statusek: no answer in time (is a worker running?)", file=sys.stderr)
                return EXIT_TIMEOUT

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return EXIT_OK


def add_parsers(sub: Any) -> None:
    def remote(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--connect-timeout", type=float, default=10, help=argparse.SUPPRESS)
        p.set_defaults(func=lambda settings, args: run_remote(settings, args, handler))
        return p

    p = remote("create", cmd_create, "create an instance; prints its token")
    p.add_argument("object_name")
    p.add_argument("--token", help="client-chosen UUID (makes create idempotent)")
    p.add_argument("--timeout", type=float, help="instance timeout, seconds")
    p.add_argument("--heartbeat", type=float, help="heartbeat timeout, seconds")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")

    p = remote("set", cmd_set, "set a status")
    p.add_argument("token")
    p.add_argument("status_name")
    p.add_argument("--message")

    p = remote("ping", cmd_ping, "ping an instance (heartbeat)")
    p.add_argument("token")
    p.add_argument("--message")
    p.add_argument("--code", type=int)

    p = remote("cancel", cmd_cancel, "cancel an instance")
    p.add_argument("token")
    p.add_argument("--reason")

    p = remote("show", cmd_show, "an instance, its statuses and events")
    p.add_argument("token")

    p = remote("watch", cmd_watch, "tail notifications")
    p.add_argument("--object", help="only this object name")
    p.add_argument("--token", help="only this instance")
    p.add_argument("--type", action="append", choices=["status-changed", "instance-finished"])
    p.add_argument("--count", type=int, default=0, help="stop after this many")

    p = remote("wait", cmd_wait, "wait until an instance finishes; prints the reason")
    p.add_argument("token")
    p.add_argument("--timeout", type=float, default=3600)

    p = sub.add_parser("graph", help="draw a model or an instance as Mermaid or DOT")
    p.add_argument("object_name", nargs="?", help="a model name (from STATUSEK_MODELS_PATH or --models)")
    p.add_argument("--instance", metavar="TOKEN", help="draw this instance, statuses set marked")
    p.add_argument("--models", action="append", help="model files or folders")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--connect-timeout", type=float, default=10, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_graph)
