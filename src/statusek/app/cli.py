"""The `statusek` command line: migrate, worker, models check."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog
from pydantic import ValidationError

from statusek.adapters.model_files import load_models, model_files
from statusek.adapters.postgres.migrate import migrate
from statusek.app import remote
from statusek.app.logging import configure
from statusek.app.settings import Settings
from statusek.core.errors import StatusekError
from statusek.core.model import ModelError

EXIT_OK, EXIT_FAILURE, EXIT_UNAVAILABLE = 0, 1, 69


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        problems = "; ".join(f"STATUSEK_{str(err['loc'][0]).upper()}: {err['msg']}" for err in e.errors())
        sys.exit(f"statusek: invalid settings: {problems}")


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate(settings.database_url))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (schema is up to date)'}")
    return EXIT_OK


def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    from statusek.app.worker import run_worker

    run_worker(settings)
    return EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statusek", description="Status-tracking worker on RabbitMQ and Postgres"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(func=cmd_migrate)
    sub.add_parser("worker", help="migrate, then run the worker until SIGTERM/SIGINT").set_defaults(
        func=cmd_worker
    )
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
    configure(settings.log_level, settings.log_format)
    try:
        code: int = args.func(settings, args)
    except ModelError as e:
        print(f"statusek: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except StatusekError as e:
        structlog.get_logger().error("fatal", error=str(e))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
