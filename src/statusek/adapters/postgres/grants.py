"""The worker role's privileges: grants.sql, run by the owner role (`statusek migrate --grant ROLE`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from statusek.adapters.postgres.errors import translated
from statusek.core.errors import StoreFailure

log = structlog.get_logger(__name__)

_PLACEHOLDER = re.compile(r""":(["'])(role|schema|database)\1""")


class GrantRefused(StoreFailure):
    """The grant cannot be made as asked (no such role, the owner itself, schema not migrated)."""


@dataclass(frozen=True, slots=True)
class Granted:
    role: str
    schema: str
    database: str
    # CREATE the role still has through PUBLIC or a membership, which grants.sql cannot revoke.
    create_left: tuple[str, ...] = ()


def grants_sql() -> str:
    """The text of grants.sql, with its psql placeholders :"role", :"schema", :"database"."""
    return (resources.files("statusek.adapters.postgres") / "grants.sql").read_text()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def render(role: str, schema: str, database: str) -> str:
    """grants.sql with :"name" replaced by a quoted identifier and :'name' by a literal, as psql -v would."""
    values = {"role": role, "schema": schema, "database": database}

    def value(m: re.Match[str]) -> str:
        quote = quote_ident if m.group(1) == '"' else quote_literal
        return quote(values[m.group(2)])

    return _PLACEHOLDER.sub(value, grants_sql())


async def grant_worker(dsn: str, role: str) -> Granted:
    """Give `role` exactly the worker's privileges on the migrated schema of the URL's database.

    Idempotent, one transaction: a worker running as `role` meanwhile sees the old grants or the new.
    """
    async with translated():
        conn = await asyncpg.connect(dsn)
        try:
            found = await conn.fetchrow("SELECT rolsuper FROM pg_roles WHERE rolname = $1", role)
            if found is None:
                raise GrantRefused(
                    f"role {role!r} does not exist: create it first, as a role allowed to "
                    f"(CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '...')"
                )
            where = await conn.fetchrow(
                "SELECT n.nspname AS schema, pg_get_userbyid(c.relowner) AS owner,"
                " current_database() AS database"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = to_regclass('schema_migrations')"
            )
            if where is None:
                raise GrantRefused("no schema_migrations table: migrate before granting")
            if found["rolsuper"] or role == where["owner"]:
                raise GrantRefused(
                    f"role {role!r} is a superuser or owns the schema: the worker needs a role of its own"
                )
            async with conn.transaction():
                await conn.execute(render(role, where["schema"], where["database"]))
            create_left = [
                f"{kind} {name}"
                for kind, name, query in (
                    ("schema", where["schema"], "SELECT has_schema_privilege($1, $2, 'CREATE')"),
                    ("database", where["database"], "SELECT has_database_privilege($1, $2, 'CREATE')"),
                )
                if await conn.fetchval(query, role, name)
            ]
        finally:
            await conn.close()
    granted = Granted(role, where["schema"], where["database"], tuple(create_left))
    log.info("worker privileges granted", role=role, schema=granted.schema, database=granted.database)
    if create_left:
        log.warning(
            "the worker role can still CREATE through PUBLIC or a role it belongs to",
            role=role,
            on=create_left,
        )
    return granted
