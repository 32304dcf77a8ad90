"""CLI subcommands that drive a running worker through `statusek.Client`.

Human output by default, `--json` for scripts. Every mistake a person can
make prints one line on stderr saying what is wrong and what to do, and
exits with one of these codes:

0 success; 1 refused by statusek (the code is printed); 2 usage (bad
arguments or settings); 3 no worker answered within `--answer-within`
(the request expires unapplied); 4 `wait`: the instance finished other than
by ALL_MANDATORY_STATUSES_ARE_SET; 5 the awaited event did not come in time
(`wait --timeout`, `watch --for` before `--count`); 69 RabbitMQ unreachable,
or the URL does not lead to statusek (wrong password, vhost, host).

Library logs (aio-pika, aiormq) stay out of the output unless `--verbose`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

from statusek import graph
from statusek.adapters.model_files import load_models
from statusek.cli import plot
from statusek.client import Client
from statusek.core.codes import Code, FinishReason
from statusek.core.messages import (
    MAX_EVENTS_PAGE,
    MAX_INSTANCES_PAGE,
    MAX_TIMEOUT_SECONDS,
    QUERIES,
    ReportData,
    decode_cursor,
)
from statusek.core.model import parse_model
from statusek.core.report import format_report
from statusek.core.rules import unknown_name_hint
from statusek.exceptions import (
    BrokerUnreachable,
    InvalidURL,
    NoAnswerError,
    NotificationsInterrupted,
    StatusekRejected,
    TopologyNotFound,
    WaitTimeoutError,
)
from statusek.settings import Settings

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_NOT_COMPLETED, EXIT_NOT_IN_TIME = 0, 1, 2, 3, 4, 5
EXIT_UNAVAILABLE = 69
DEFAULT_ANSWER_WITHIN = 10.0

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def say(message: str) -> None:
    """One line on stderr: what is wrong and what to do."""
    print(f"statusek: {message}", file=sys.stderr, flush=True)


# Argument types: a mistake is a usage error (exit 2), not a refusal later.


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_SECONDS):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --label team=ops)")
    return key, value


def token(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an instance token (a UUID, as printed by 'statusek create')"
        ) from None


def day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def instant(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2026-11-23 or 2026-11-23T12:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def page_size(most: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} is not a page size from 1 to {most}")
        return value

    return parse


def cursor(text: str) -> str:
    try:
        decode_cursor(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is {e}") from None
    return text


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False), flush=True)
    else:
        print(human, flush=True)


def left(args: argparse.Namespace) -> float:
    """Seconds left of the command's `--answer-within` budget."""
    remaining = float(args.deadline - asyncio.get_running_loop().time())
    if remaining <= 0:
        raise NoAnswerError(args.command, args.answer_within, args.vhost)
    return remaining


async def cmd_create(client: Client, args: argparse.Namespace) -> int:
    created = await client.create_instance(
        args.object_name,
        instance_token=args.token,
        instance_timeout=args.timeout,
        heartbeat_timeout=args.heartbeat,
        labels=dict(args.label),
        timeout=left(args),
    )
    emit(args, {"instance_token": created.token, "created": created.created}, created.token)
    if not created.created:
        say(f"instance {created.token} already exists with these arguments; nothing was changed")
    return EXIT_OK


async def cmd_set(client: Client, args: argparse.Namespace) -> int:
    await client.set_status(args.token, args.status_name, args.message, timeout=left(args))
    emit(args, {"instance_token": args.token, "status_name": args.status_name}, f"{args.status_name} is set")
    return EXIT_OK


async def cmd_ping(client: Client, args: argparse.Namespace) -> int:
    deadline = await client.ping(args.token, args.message, args.code, timeout=left(args))
    emit(args, {"deadline": deadline}, f"alive; next deadline {deadline or 'none'}")
    return EXIT_OK


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    await client.cancel(args.token, args.reason, timeout=left(args))
    emit(args, {"instance_token": args.token, "cancelled": True}, f"{args.token} is cancelled")
    return EXIT_OK


async def cmd_show(client: Client, args: argparse.Namespace) -> int:
    instance = await client.get_instance(args.token, timeout=left(args))
    events = await client.get_events(args.token, timeout=left(args))
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
    if instance.get("pings"):
        pings = [
            [p["sender"], str(p["count"]), p["first_at"], p["last_at"], p["last_message"] or ""]
            for p in instance["pings"]
        ]
        print(table(["PINGS BY", "COUNT", "FIRST", "LAST", "LAST MESSAGE"], pings))
        print()
    print(
        table(
            ["SEQ", "KIND", "STATUS", "TYPE", "MESSAGE", "BY", "AT"],
            [
                [
                    str(e["seq"]),
                    e["kind"],
                    e["status_name"] or e["reason"] or "",
                    e["status_type"] or "",
                    e["message"] or ("" if e["code"] is None else f"code {e['code']}"),
                    e.get("actor") or "statusek",
                    e["occurred_at"],
                ]
                for e in events
            ],
        )
    )
    return EXIT_OK


async def cmd_report(client: Client, args: argparse.Namespace) -> int:
    if args.since and args.until and args.since > args.until:
        say(f"--since {args.since} is after --until {args.until}")
        return EXIT_USAGE
    if args.plot and not plot.available():
        say("--plot needs matplotlib: pip install 'statusek[plot]'")
        return EXIT_USAGE
    data = await client.get_report(args.object_name, since=args.since, until=args.until, timeout=left(args))
    report = ReportData.model_validate(data)
    if args.plot:
        plot.plot_report(report, args.plot)
    emit(args, data, format_report(report))
    if args.plot:
        say(f"chart written to {args.plot}")
    return EXIT_OK


async def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    if args.open and args.reason:
        say("--reason lists finished instances: leave out --open")
        return EXIT_USAGE
    data = await client.find_instances(
        object_name=args.object,
        labels=dict(args.label) or None,
        finished=True if args.finished else False if args.open else None,
        finish_reason=args.reason,
        created_after=args.since,
        created_before=args.until,
        after=args.after,
        limit=args.limit,
        timeout=left(args),
    )
    found, after = data["instances"], data.get("next_after")
    if args.json:
        emit(args, data, "")
        return EXIT_OK
    if found:
        print(
            table(
                ["TOKEN", "OBJECT", "CREATED", "FINISHED", "STATUSES", "LABELS"],
                [
                    [
                        i["instance_token"],
                        i["object_name"],
                        i["created_at"],
                        i["finish_reason"] or "-",
                        ",".join(i["statuses"]) or "-",
                        ",".join(f"{k}={v}" for k, v in i["labels"].items()) or "-",
                    ]
                    for i in found
                ],
            ),
            flush=True,
        )
    else:
        say("no instance matches")
    if after:
        say(f"more instances follow: add --after {after} for the next page")
    return EXIT_OK


async def cmd_global_set(client: Client, args: argparse.Namespace) -> int:
    await client.set_global_status(args.status_name, args.message, timeout=left(args))
    emit(args, {"status_name": args.status_name}, f"global status {args.status_name} is set")
    return EXIT_OK


async def cmd_global_ls(client: Client, args: argparse.Namespace) -> int:
    data = await client.get_global_events(
        after_seq=args.after_seq, limit=args.limit, status_name=args.name, timeout=left(args)
    )
    events, after = data["events"], data.get("next_after_seq")
    if args.json:
        emit(args, data, "")
        return EXIT_OK
    if events:
        print(
            table(
                ["SEQ", "STATUS", "MESSAGE", "BY", "AT"],
                [
                    [str(e["seq"]), e["status_name"], e["message"] or "", e["actor"] or "-", e["occurred_at"]]
                    for e in events
                ],
            ),
            flush=True,
        )
    else:
        say("no global status" + (" after that seq" if args.after_seq else " is set yet"))
    if after is not None:
        say(f"more global statuses follow: add --after-seq {after} for the next page")
    return EXIT_OK


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


async def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    """Tail notifications; a lost link is made again, with a line saying some may be missing."""
    loop = asyncio.get_running_loop()
    until = loop.time() + args.for_seconds if args.for_seconds else None
    seen = 0
    types = set(args.type) if args.type else None
    while True:
        try:
            stream = client.notifications(
                object_name=args.object, instance_token=args.token, types=types, timeout=args.answer_within
            )
            async with asyncio.timeout_at(until), contextlib.aclosing(stream):
                async for kind, body in stream:
                    if args.json:
                        print(json.dumps({"type": kind, **body}, ensure_ascii=False), flush=True)
                    elif "instance_token" not in body:  # a global status
                        print(
                            f"{kind:<17} {'global':<36}  #{body['seq']:<3} {body['status_name']}", flush=True
                        )
                    else:
                        what = body.get("status_name") or body.get("reason")
                        print(
                            f"{kind:<17} {body['instance_token']}  #{body['seq']:<3} {what}  "
                            f"[{body['object_name']}]",
                            flush=True,
                        )
                    seen += 1
                    if args.count and seen >= args.count:
                        return EXIT_OK
                return EXIT_OK  # the client was closed
        except NotificationsInterrupted:
            say("lost the link to RabbitMQ; reconnecting (notifications sent meanwhile are missing)")
        except TimeoutError:
            if args.count:
                got = f"{seen} of {args.count} notification(s)"
                say(f"only {got} within {args.for_seconds:g} s: wait longer with --for")
                return EXIT_NOT_IN_TIME
            return EXIT_OK


async def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    reason = await client.wait_finished(args.token, timeout=args.timeout, answer_within=left(args))
    emit(args, {"instance_token": args.token, "reason": reason}, reason)
    return EXIT_OK if reason == "ALL_MANDATORY_STATUSES_ARE_SET" else EXIT_NOT_COMPLETED


async def cmd_graph_instance(client: Client, args: argparse.Namespace) -> int:
    instance = await client.get_instance(args.token, timeout=left(args))
    model = parse_model(instance["model"], source="get-instance", version=instance["model_version"])
    draw = graph.dot if args.format == "dot" else graph.mermaid
    print(draw(model, instance["statuses"]), end="")
    return EXIT_OK


def cmd_graph(settings: Settings, args: argparse.Namespace) -> int:
    if args.instance:
        return run_remote(settings, args, cmd_graph_instance, token_from="instance")
    quiet_libraries(args.verbose)
    if not args.object_name:
        say("give a model name or --instance TOKEN (see 'statusek graph --help')")
        return EXIT_USAGE
    paths = [Path(p) for p in args.models] if args.models else settings.model_paths()
    models, errors = load_models(paths)
    for error in errors:
        say(f"skipped: {error}")
    by_name = {m.object_name: m for m in models}
    if args.object_name not in by_name:
        hint = unknown_name_hint(args.object_name, sorted(by_name))
        say(f"no model named {args.object_name!r} in {_models_setting(args)}{hint}")
        return EXIT_REFUSED
    draw = graph.dot if args.format == "dot" else graph.mermaid
    print(draw(by_name[args.object_name]), end="")
    return EXIT_OK


def _models_setting(args: argparse.Namespace) -> str:
    return "--models" if getattr(args, "models", None) else "STATUSEK_MODELS_PATH"


def quiet_libraries(verbose: bool) -> None:
    """Library log lines (aiormq's JSON on a failed connect, say) only with --verbose."""
    logging.getLogger().setLevel(logging.INFO if verbose else logging.CRITICAL + 1)


def refused(settings: Settings, args: argparse.Namespace, e: StatusekRejected) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"code": e.code, "message": e.message}), flush=True)
    message = e.message
    if e.code == Code.OBJECT_NAME_IS_NOT_FOUND and getattr(args, "object_name", None):
        # The worker knows only the name asked for; the model files here know the others.
        models, _ = load_models(settings.model_paths())
        known = sorted(m.object_name for m in models)
        message += unknown_name_hint(args.object_name, known, label="models in STATUSEK_MODELS_PATH")
    say(f"{e.code}: {message}")
    return EXIT_REFUSED


async def no_answer(client: Client, args: argparse.Namespace, e: NoAnswerError) -> int:
    queue = "statusek.queries" if e.routing_key in QUERIES else None
    consumers = await client.consumers(queue or "statusek.commands", timeout=0.5)
    if consumers == 0:
        why = f"no worker is running on vhost {e.vhost!r}"
        fix = "start one ('statusek worker'), or point STATUSEK_AMQP_URL at the worker's vhost"
    else:
        why = "the worker did not answer (busy or stalled?)"
        fix = "retry, or allow longer with --answer-within"
    # The bound the person gave, not what was left of it when the last request went out.
    bound = min(args.answer_within, args.timeout) if args.command == "wait" else args.answer_within
    say(f"no answer within {bound:g} s: {why}; the request expires unapplied: {fix}")
    return EXIT_NO_ANSWER


def run_remote(settings: Settings, args: argparse.Namespace, handler: Handler, token_from: str = "") -> int:
    if token_from:
        args.token = getattr(args, token_from)
    quiet_libraries(args.verbose)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        args.deadline = loop.time() + args.answer_within
        try:
            client = await Client.connect(settings.amqp_url, timeout=args.answer_within)
        except InvalidURL as e:
            say(f"STATUSEK_AMQP_URL: {e}")
            return EXIT_USAGE
        except TopologyNotFound as e:
            say(
                f"vhost {e.vhost!r} on {e.location} has no statusek exchanges (no worker ever ran there): "
                "set STATUSEK_AMQP_URL to the worker's vhost, amqp://user:password@host:5672/VHOST"
            )
            return EXIT_UNAVAILABLE
        except BrokerUnreachable as e:
            say(f"{e}; check STATUSEK_AMQP_URL")
            return EXIT_UNAVAILABLE
        args.vhost = client.vhost
        async with client:
            try:
                return await handler(client, args)
            except StatusekRejected as e:
                return refused(settings, args, e)
            except NoAnswerError as e:
                return await no_answer(client, args, e)
            except WaitTimeoutError as e:
                say(f"instance {e.token} is still open after {e.seconds:g} s: wait longer with --timeout")
                return EXIT_NOT_IN_TIME
            except BrokerUnreachable as e:  # lost for longer than the bound, or not allowed
                say(str(e))
                return EXIT_UNAVAILABLE

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return EXIT_OK


def add_parsers(sub: Any) -> None:
    def remote(name: str, handler: Handler, help_text: str, within: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = within.add_parser(name, help=help_text)
        common(p)
        p.set_defaults(func=lambda settings, args: run_remote(settings, args, handler))
        return p

    def common(p: argparse.ArgumentParser, hide_json: bool = False) -> None:
        p.add_argument("--json", action="store_true", help=argparse.SUPPRESS if hide_json else "JSON output")
        p.add_argument(
            "--answer-within",
            type=seconds,
            default=DEFAULT_ANSWER_WITHIN,
            metavar="S",
            help="seconds to wait for RabbitMQ and the worker's answer; a request not taken "
            f"by then expires unapplied (default {DEFAULT_ANSWER_WITHIN:g}; exit 3 when it passes)",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="also print library logs on stderr")

    p = remote("create", cmd_create, "create an instance; prints its token")
    p.add_argument("object_name")
    p.add_argument("--token", type=token, help="client-chosen UUID (makes create idempotent)")
    p.add_argument("--timeout", type=seconds, metavar="S", help="the instance's timeout, seconds")
    p.add_argument("--heartbeat", type=seconds, metavar="S", help="the instance's heartbeat timeout, seconds")
    p.add_argument("--label", type=label, action="append", default=[], metavar="KEY=VALUE")

    p = remote("set", cmd_set, "set a status")
    p.add_argument("token", type=token)
    p.add_argument("status_name")
    p.add_argument("--message")

    p = remote("ping", cmd_ping, "ping an instance (heartbeat)")
    p.add_argument("token", type=token)
    p.add_argument("--message")
    p.add_argument("--code", type=int)

    p = remote("cancel", cmd_cancel, "cancel an instance")
    p.add_argument("token", type=token)
    p.add_argument("--reason")

    p = remote("show", cmd_show, "an instance, its statuses and events")
    p.add_argument("token", type=token)

    p = remote("report", cmd_report, "durations of an object's finished instances, per status")
    p.add_argument("object_name")
    p.add_argument("--since", type=day, metavar="DATE", help="first day of finish, UTC (YYYY-MM-DD)")
    p.add_argument("--until", type=day, metavar="DATE", help="last day of finish, UTC (YYYY-MM-DD)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the durations (needs matplotlib)")

    p = remote("watch", cmd_watch, "tail notifications")
    p.add_argument("--object", help="only this object name")
    p.add_argument("--token", type=token, help="only this instance")
    p.add_argument(
        "--type", action="append", choices=["status-changed", "instance-finished", "global-status"]
    )
    p.add_argument("--count", type=count, default=0, help="stop after this many")
    p.add_argument(
        "--for",
        dest="for_seconds",
        type=seconds,
        metavar="S",
        help="stop after S seconds (exit 5 if --count was not reached)",
    )

    p = remote("wait", cmd_wait, "wait until an instance finishes; prints the reason")
    p.add_argument("token", type=token)
    p.add_argument(
        "--timeout",
        type=seconds,
        default=3600,
        metavar="S",
        help="seconds to wait for the finish (default 3600; exit 5 when it passes)",
    )

    p = remote("ls", cmd_ls, "list instances, oldest first, one page at a time")
    p.add_argument("--object", help="only instances of this object name")
    p.add_argument(
        "--label", type=label, action="append", default=[], metavar="KEY=VALUE", help="only with this label"
    )
    state = p.add_mutually_exclusive_group()
    state.add_argument("--finished", action="store_true", help="only finished instances")
    state.add_argument("--open", action="store_true", help="only open instances")
    p.add_argument("--reason", choices=[r.value for r in FinishReason], help="only finished for this reason")
    p.add_argument(
        "--since", type=instant, metavar="TIME", help="created at or after (ISO 8601; UTC if no offset)"
    )
    p.add_argument(
        "--until", type=instant, metavar="TIME", help="created before (ISO 8601; UTC if no offset)"
    )
    p.add_argument(
        "--limit",
        type=page_size(MAX_INSTANCES_PAGE),
        metavar="N",
        help=f"at most N instances (default 100, at most {MAX_INSTANCES_PAGE})",
    )
    p.add_argument(
        "--after", type=cursor, metavar="CURSOR", help="the next page: the cursor the last one gave"
    )

    p = sub.add_parser("global", help="global statuses: named events of no instance")
    global_sub = p.add_subparsers(dest="global_command", required=True)
    p = remote("set", cmd_global_set, "set a global status", within=global_sub)
    p.add_argument("status_name")
    p.add_argument("--message")
    p = remote("ls", cmd_global_ls, "list global statuses, oldest first", within=global_sub)
    p.add_argument("--name", help="only this status name")
    p.add_argument("--after-seq", type=count, default=0, metavar="SEQ", help="only after this seq")
    p.add_argument(
        "--limit",
        type=page_size(MAX_EVENTS_PAGE),
        metavar="N",
        help=f"at most N (default 1000, at most {MAX_EVENTS_PAGE})",
    )

    p = sub.add_parser("graph", help="draw a model or an instance as Mermaid or DOT")
    p.add_argument("object_name", nargs="?", help="a model name (from STATUSEK_MODELS_PATH or --models)")
    p.add_argument("--instance", type=token, metavar="TOKEN", help="draw this instance, statuses set marked")
    p.add_argument("--models", action="append", help="model files or folders")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    common(p, hide_json=True)
    p.set_defaults(func=cmd_graph)
