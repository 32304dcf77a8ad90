"""The `statusek` command line: migrate, worker, models check."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from statusek.adapters.model_files import GroupsError, load_models, model_files
from statusek.adapters.rabbitmq.endpoints import split_urls
from statusek.cli import remote
from statusek.core.errors import StatusekError
from statusek.core.model import ModelError
from statusek.identity import Identity, version
from statusek.logs import configure
from statusek.redact import mask_secrets, url_location
from statusek.settings import Settings

# One table of exit codes for every subcommand (documented in statusek.cli.remote).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNAVAILABLE = (
    remote.EXIT_OK,
    remote.EXIT_REFUSED,
    remote.EXIT_USAGE,
    remote.EXIT_UNAVAILABLE,
)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        problems = "; ".join(f"STATUSEK_{str(err['loc'][0]).upper()}: {err['msg']}" for err in e.errors())
        print(f"statusek: invalid settings: {problems}: fix the environment or .env", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except SettingsError as e:  # e.g. a <VAR>_FILE: the message names variables and path, never content
        print(f"statusek: invalid settings: {e}: fix the environment or .env", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here, as the worker is: the remote commands and the gateway run without asyncpg.
    from statusek.adapters.postgres.grants import GrantRefused, grant_worker
    from statusek.adapters.postgres.migrate import migrate

    roles = list(dict.fromkeys(r.strip() for value in args.grant for r in value.split(",") if r.strip()))

    async def run() -> int:
        applied = await migrate(settings.database_url)
        print(f"migrations applied: {', '.join(applied) if applied else 'none (schema is up to date)'}")
        for role in roles:
            try:
                granted = await grant_worker(settings.database_url, role)
            except GrantRefused as e:
                print(f"statusek migrate: cannot grant: {e}", file=sys.stderr)
                return EXIT_FAILURE
            print(f"granted {role} the worker's privileges on schema {granted.schema} of {granted.database}")
            for where in granted.create_left:
                print(
                    f"warning: {role} can still CREATE in {where} through PUBLIC or a role it belongs to",
                    file=sys.stderr,
                )
        return EXIT_OK

    return asyncio.run(run())


def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    from statusek.ops import CannotListen
    from statusek.worker.worker import ComponentCrashed, run_worker

    try:
        run_worker(settings)
    except ComponentCrashed as e:
        print(
            f"statusek worker: stopped after a component crashed: {e} (its traceback is in the log)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except CannotListen as e:
        # Exit rather than run without the ops server: probes and scrapes would find nothing,
        # or another worker's answers, and nobody would know.
        if e.in_use:
            fix = (
                "another worker on this host? give each worker its own STATUSEK_OPS_PORT, "
                "or 0 to run it without the ops server"
            )
        else:
            fix = "fix STATUSEK_OPS_HOST or STATUSEK_OPS_PORT"
        print(
            f"statusek worker: the ops server cannot listen on {e.host}:{e.port} "
            f"(STATUSEK_OPS_PORT): {e.reason}: {fix}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_gateway(settings: Settings, _args: argparse.Namespace) -> int:
    from statusek.exceptions import InvalidURL
    from statusek.gateway.server import GatewayConfigError, run_gateway
    from statusek.ops import CannotListen

    try:
        run_gateway(settings)
    except InvalidURL as e:
        print(f"statusek gateway: {e}: fix STATUSEK_AMQP_URL", file=sys.stderr)
        return EXIT_USAGE
    except GatewayConfigError as e:
        print(f"statusek gateway: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CannotListen as e:
        fix = "a worker on this host? give the gateway its own STATUSEK_OPS_PORT, or 0 to run it without"
        print(
            f"statusek gateway: the ops server cannot listen on {e.host}:{e.port} (STATUSEK_OPS_PORT):"
            f" {e.reason}: {fix if e.in_use else 'fix STATUSEK_OPS_HOST or STATUSEK_OPS_PORT'}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except OSError as e:  # the port is taken, or not ours to bind
        where = f"{settings.http_host}:{settings.http_port}"
        print(f"statusek gateway: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_gateway_user(_settings: Settings, args: argparse.Namespace) -> int:
    """Print a users-file line for NAME: with a new password (shown on stderr), or one read from stdin."""
    from statusek.gateway.users import check_name, hash_password, new_password, users_line

    try:
        check_name(args.name)
    except ValueError as e:
        print(f"statusek gateway-user: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("statusek gateway-user: no password on stdin", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = new_password()
        print(f"password of {args.name}: {password}", file=sys.stderr)
    print(users_line(args.name, hash_password(password)))
    return EXIT_OK


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    """Ask the local worker's /readyz: the container HEALTHCHECK."""
    if not settings.ops_port:
        print("statusek health: STATUSEK_OPS_PORT is 0, the ops server is off", file=sys.stderr)
        return EXIT_FAILURE
    url = f"http://{args.host}:{settings.ops_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout):
            print(f"ready ({url})")
            return EXIT_OK
    except urllib.error.HTTPError as e:
        try:
            problems = json.loads(e.read()).get("problems", {})
            reason = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        except (ValueError, AttributeError):
            reason = f"HTTP {e.code}"
        print(f"not ready: {reason}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as e:
        cause = e.reason if isinstance(e, urllib.error.URLError) else e
        print(f"not ready: no worker answers at {url} ({cause})", file=sys.stderr)
    return EXIT_FAILURE


def cmd_models_check(settings: Settings, args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files] or settings.model_paths()
    files = model_files(paths)
    models, errors = load_models(paths)
    for model in models:
        print(f"ok    {model.object_name!r}: {len(model.statuses)} statuses, digest {model.digest()[:12]}")
    for error in errors:
        print(f"error {error}")
    print(f"{len(files)} file(s): {len(models)} valid model(s), {len(errors)} error(s)")
    return EXIT_FAILURE if errors or not files else EXIT_OK


def cmd_schemas(_settings: Settings, args: argparse.Namespace) -> int:
    from statusek import contract

    folder = Path(args.folder)
    if args.schemas_command == "write":
        written = contract.write(folder)
        print(f"wrote {len(written)} file(s) under {folder}")
        return EXIT_OK
    stale = contract.drift(folder)
    for name in stale:
        print(f"differs from the code: {folder / name}")
    print(f"{len(stale)} file(s) differ" if stale else f"{folder} matches the code")
    return EXIT_FAILURE if stale else EXIT_OK


def _log_context(settings: Settings, command: str) -> dict[str, object]:
    """Who wrote a log line: the process, and which broker and vhost it meant (no credentials)."""
    me = Identity.current(command)
    nodes = [url_location(url) for url in split_urls(settings.amqp_url)]
    return {
        "host": me.host,
        "pid": me.pid,
        "version": version(),
        "vhost": nodes[0]["path"] or "/",
        "broker": ",".join(f"{node['host']}:{node['port'] or 5672}" for node in nodes),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = remote.UsageParser(
        prog="statusek",
        description="Status-tracking worker on RabbitMQ and Postgres",
        epilog="exit codes: 0 ok, 1 refused, 2 usage, 3 no answer in time, 4 wait: finished but not "
        "completed, 5 wait/watch: not in time, 69 RabbitMQ unreachable or not statusek's",
    )
    parser.add_argument("--version", action="version", version=f"statusek {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    migrate_parser = sub.add_parser("migrate", help="create or upgrade the database schema (as its owner)")
    migrate_parser.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="ROLE",
        help="then give ROLE exactly the worker's privileges (grants.sql); repeatable or comma-separated",
    )
    migrate_parser.set_defaults(func=cmd_migrate)
    sub.add_parser(
        "worker",
        help="run the worker until SIGTERM/SIGINT (migrating a schema found behind, unless "
        "STATUSEK_MIGRATE_ON_START=false)",
    ).set_defaults(func=cmd_worker)
    sub.add_parser(
        "gateway",
        help="serve the original Statusek's REST API on STATUSEK_HTTP_PORT until SIGTERM/SIGINT",
    ).set_defaults(func=cmd_gateway)
    gateway_user = sub.add_parser(
        "gateway-user",
        help="print a line of STATUSEK_GATEWAY_USERS_FILE for a user of the gateway (a new password"
        " on stderr, or --password-stdin)",
    )
    gateway_user.add_argument("name", help="the user: the sender writer lists name and events record")
    gateway_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    gateway_user.set_defaults(func=cmd_gateway_user)
    health = sub.add_parser("health", help="exit 0 if the worker at STATUSEK_OPS_PORT is ready, else 1")
    health.add_argument("--host", default="127.0.0.1", help="where the worker's ops server listens")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    health.set_defaults(func=cmd_health)
    models = sub.add_parser("models", help="status model files")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    check = models_sub.add_parser("check", help="validate model files and print what is wrong")
    check.add_argument("files", nargs="*", help="files or folders (default: STATUSEK_MODELS_PATH)")
    check.set_defaults(func=cmd_models_check)
    schemas = sub.add_parser("schemas", help="the contract files (JSON Schema, AsyncAPI)")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    for name, text in (("write", "regenerate the files from the code"), ("check", "fail if the files drift")):
        p = schemas_sub.add_parser(name, help=text)
        p.add_argument("folder", nargs="?", default="schemas")
        p.set_defaults(func=cmd_schemas)
    remote.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings()
    configure(settings.log_level, settings.log_format, _log_context(settings, args.command))
    try:
        code: int = args.func(settings, args)
    except (ModelError, GroupsError) as e:
        print(f"statusek: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except StatusekError as e:
        structlog.get_logger().error("fatal", error=mask_secrets(str(e)))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
