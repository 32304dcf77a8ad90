"""Schema migrations: numbered SQL files applied once, safe to run concurrently."""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from statusek.adapters.postgres.errors import translated

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


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    created = await create_database_if_missing(dsn)
    if created:
        log.info("database created", database=urlsplit(dsn).path.lstrip("/"))
    applied: list[str] = []
    async with translated():
        conn = await asyncpg.connect(dsn)
        try:
            # The advisory lock serialises concurrent migrators; the second one
            # then finds everything applied and does nothing.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
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
