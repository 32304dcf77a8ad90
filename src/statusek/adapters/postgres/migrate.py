"""Schema migrations: numbered SQL files applied once, safe to run concurrently."""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from statusek.adapters.postgres.errors import translated
from statusek.core.errors import StoreFailure

log = structlog.get_logger(__name__)

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK = 0x5747_5553_4D49_47  # "STATUSMIG"-ish, fits in bigint


def migrations() -> list[tuple[str, str]]:
    folder = resources.files("statusek.adapters.postgres") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def create_database_if_missing(dsn: str) -> bool:
    """Create the database the URL names; True if this call created it."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return False
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
    async with translated():
        conn = await asyncpg.connect(admin_dsn)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return False
            try:
                await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                return False  # another process won the race; that is fine
            return True
        finally:
            await conn.close()


async def _connect_creating(dsn: str) -> asyncpg.Connection:
    """A connection to the URL's database, created first when missing (the quick start)."""
    try:
        return await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        if await create_database_if_missing(dsn):
            log.info("database created", database=urlsplit(dsn).path.lstrip("/"))
        return await asyncpg.connect(dsn)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call.

    With nothing pending it changes nothing, so any role that may read schema_migrations can run it.
    """
    applied: list[str] = []
    async with translated():
        conn = await _connect_creating(dsn)
        try:
            # The advisory lock serialises concurrent migrators; the second one
            # then finds everything applied and does nothing.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in migrations():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("migration applied", migration=name)
        finally:
            await conn.close()
    return applied


# --- the worker's start: SELECT only --------------------------------------------------------------


class SchemaNotReady(StoreFailure):
    """The database lacks migrations (or grants) and this process may not, or shall not, fix it."""


def _fix(dsn: str) -> str:
    role = urlsplit(dsn).username or "<worker role>"
    return (
        f"run `statusek migrate` as the owner role, then `statusek migrate --grant {role}`"
        f" (unless {role} is the owner)"
    )


async def pending_migrations(dsn: str) -> list[str] | None:
    """The migrations not applied to the URL's database, read with SELECT only; None: no database.

    Raises `SchemaNotReady` when this role may not read schema_migrations.
    """
    async with translated():
        try:
            conn = await asyncpg.connect(dsn)
        except asyncpg.InvalidCatalogNameError:
            return None
        try:
            readable = await conn.fetchval(
                "SELECT has_table_privilege(to_regclass('schema_migrations'), 'SELECT')"
            )
            if readable is False:
                raise SchemaNotReady(await _ungranted_message(conn, dsn) or _fix(dsn))
            if readable is None:
                # Not there, or in a schema this role may not use (its tables are then invisible).
                hidden = await conn.fetchval(
                    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.relname = 'schema_migrations' AND NOT has_schema_privilege(n.oid, 'USAGE')"
                    " LIMIT 1"
                )
                if hidden is not None:
                    raise SchemaNotReady(f"this role may not use schema {hidden!r}: {_fix(dsn)}")
                done: set[str] = set()
            else:
                done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        finally:
            await conn.close()
    return [name for name, _sql in migrations() if name not in done]


async def _ungranted_message(conn: asyncpg.Connection, dsn: str) -> str | None:
    """What this role lacks on the tables of schema_migrations' schema, or None when nothing.

    Every table needs SELECT and INSERT (schema_migrations: SELECT); UPDATE and DELETE are the
    grant's business, not checked here.
    """
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c"
        " WHERE c.relnamespace = (SELECT relnamespace FROM pg_class"
        "                         WHERE oid = to_regclass('schema_migrations'))"
        " AND c.relkind IN ('r', 'p')"
        " AND NOT (has_table_privilege(c.oid, 'SELECT')"
        "          AND (c.relname = 'schema_migrations' OR has_table_privilege(c.oid, 'INSERT')))"
        " ORDER BY c.relname"
    )
    if not rows:
        return None
    return f"this role lacks privileges on tables {', '.join(r['relname'] for r in rows)}: {_fix(dsn)}"


async def ungranted(dsn: str) -> str | None:
    """Why this role may not work on the URL's tables, or None when it may."""
    async with translated():
        conn = await asyncpg.connect(dsn)
        try:
            return await _ungranted_message(conn, dsn)
        finally:
            await conn.close()


async def ensure_current(dsn: str, *, migrate_on_start: bool) -> list[str]:
    """At a worker's start: check with SELECT only that every migration is applied.

    Behind, it migrates when `migrate_on_start` allows and the role may; else it raises
    `SchemaNotReady`, whose message names the missing migrations and how to apply them.
    Returns the migrations it applied.
    """
    missing = await pending_migrations(dsn)
    applied: list[str] = []
    if missing is None or missing:
        what = (
            f"database {urlsplit(dsn).path.lstrip('/')!r} does not exist"
            if missing is None
            else f"database schema is behind: missing migrations {', '.join(missing)}"
        )
        if not migrate_on_start:
            raise SchemaNotReady(f"{what} and STATUSEK_MIGRATE_ON_START is off: {_fix(dsn)}")
        try:
            applied = await migrate(dsn)
        except StoreFailure as e:
            if not isinstance(e.__cause__, asyncpg.InsufficientPrivilegeError):
                raise
            raise SchemaNotReady(f"{what} and this role may not migrate ({e.__cause__}): {_fix(dsn)}") from e
    problem = await ungranted(dsn)
    if problem:
        raise SchemaNotReady(problem)
    return applied
