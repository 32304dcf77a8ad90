"""Least privilege in Postgres: the owner migrates and grants, the worker's role only reads and writes rows.

Each test gets a database of its own, made and migrated by an owner role (LOGIN CREATEDB, not a
superuser), and a LOGIN role for the worker; both with random names and passwords, dropped afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from statusek.adapters.postgres.grants import grant_worker
from statusek.adapters.postgres.migrate import SchemaNotReady, ensure_current, migrations
from statusek.client import Client
from statusek.settings import Settings
from statusek.testing import Services, fresh_vhost, running_worker
from tests.helpers import statusek
from tests.integration.conftest import Database

pytestmark = pytest.mark.integration

LAST_MIGRATION = migrations()[-1][0]


@pytest.fixture
async def as_worker(granted: Database) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the granted worker role."""
    conn = await asyncpg.connect(granted.role_url)
    yield conn
    await conn.close()


@pytest.fixture
def vhost(services: Services) -> Iterator[str]:
    with fresh_vhost(services.amqp_url, admin=services.rabbit) as url:
        yield url


def worker_settings(database_url: str, amqp_url: str, models_path: str, **overrides: object) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        models_path=models_path,
        sweep_max_sleep=2.0,
        log_level="WARNING",
        ops_port=0,
        **overrides,  # type: ignore[arg-type]
    )


async def forget_last_migration(owner_url: str) -> None:
    """Make the database look one migration behind the code."""
    owner = await asyncpg.connect(owner_url)
    try:
        await owner.execute("DELETE FROM schema_migrations WHERE name = $1", LAST_MIGRATION)
    finally:
        await owner.close()


def env_for(database_url: str, **more: str) -> dict[str, str]:
    return {**os.environ, "STATUSEK_DATABASE_URL": database_url, "STATUSEK_LOG_FORMAT": "json", **more}


async def test_role_inserts_and_selects_events(as_worker: asyncpg.Connection) -> None:
    """The worker role may insert events and read them back."""
    token = uuid.uuid4()
    await as_worker.execute(
        "INSERT INTO model_versions (object_name, version, digest, definition) VALUES ('M', 1, 'd', '{}')"
    )
    await as_worker.execute(
        "INSERT INTO instances (token, object_name, model_version, labels, create_args, created_at,"
        " statuses, last_seq) VALUES ($1, 'M', 1, '{}', '{}', now(), '{}', 1)",
        token,
    )
    await as_worker.execute(
        "INSERT INTO events (instance_token, seq, kind, occurred_at) VALUES ($1, 1, 'created', now())", token
    )
    assert await as_worker.fetchval("SELECT kind FROM events WHERE instance_token = $1", token) == "created"


@pytest.mark.parametrize(
    "statement", ["UPDATE events SET kind = kind", "DELETE FROM events", "TRUNCATE events"]
)
async def test_role_may_not_change_or_remove_events(as_worker: asyncpg.Connection, statement: str) -> None:
    """UPDATE, DELETE and TRUNCATE on events fail for lack of privilege, before the trigger is reached."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table events"):
        await as_worker.execute(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE statusek_intruder (x int)",
        "ALTER TABLE events ADD COLUMN intruder int",
        "DROP TABLE outbox",
        "CREATE SCHEMA statusek_intruder",
    ],
)
async def test_role_may_not_change_the_schema(as_worker: asyncpg.Connection, statement: str) -> None:
    """DDL fails for the worker role: it may not create, alter or drop anything."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_worker.execute(statement)


async def test_role_only_reads_schema_migrations(as_worker: asyncpg.Connection) -> None:
    """The worker role reads schema_migrations but may not record a migration."""
    assert await as_worker.fetchval("SELECT count(*) FROM schema_migrations") == len(migrations())
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_worker.execute("INSERT INTO schema_migrations (name) VALUES ('999_intruder')")


async def test_grant_is_idempotent(granted: Database) -> None:
    """Granting again leaves exactly the same privileges."""
    query = (
        "SELECT (SELECT datacl::text FROM pg_database WHERE datname = current_database()),"
        " (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'),"
        " (SELECT json_object_agg(relname, relacl::text ORDER BY relname) FROM pg_class"
        "  WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S'))::text"
    )
    owner = await asyncpg.connect(granted.owner_url)
    try:
        before = await owner.fetchrow(query)
        await grant_worker(granted.owner_url, granted.role)
        assert await owner.fetchrow(query) == before
    finally:
        await owner.close()


async def test_granting_again_covers_a_new_table(granted: Database) -> None:
    """A table added by a later migration is covered once the grant runs again."""
    owner = await asyncpg.connect(granted.owner_url)
    worker = await asyncpg.connect(granted.role_url)
    try:
        await owner.execute("CREATE TABLE statusek_later (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.execute("INSERT INTO statusek_later VALUES (1)")
        await grant_worker(granted.owner_url, granted.role)
        await worker.execute("INSERT INTO statusek_later VALUES (1)")
        assert await worker.fetchval("SELECT x FROM statusek_later") == 1
    finally:
        await worker.close()
        await owner.close()


async def test_every_append_only_table_is_select_and_insert_only(granted: Database) -> None:
    """A later table with the append-only trigger of events gets no UPDATE or DELETE when granting again."""
    owner = await asyncpg.connect(granted.owner_url)
    worker = await asyncpg.connect(granted.role_url)
    try:
        await owner.execute(
            "CREATE TABLE statusek_later_log (x int);"
            " CREATE TRIGGER later_log_append_only BEFORE UPDATE OR DELETE ON statusek_later_log"
            " FOR EACH ROW EXECUTE FUNCTION statusek_events_are_append_only()"
        )
        await grant_worker(granted.owner_url, granted.role)
        await worker.execute("INSERT INTO statusek_later_log VALUES (1)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await worker.execute("UPDATE statusek_later_log SET x = 2")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await worker.execute("DELETE FROM statusek_later_log")
    finally:
        await worker.close()
        await owner.close()


async def test_role_may_run_functions_public_may_not(granted: Database) -> None:
    """A function of the schema revoked from PUBLIC (e.g. a SECURITY DEFINER purge) is the worker's to run."""
    owner = await asyncpg.connect(granted.owner_url)
    worker = await asyncpg.connect(granted.role_url)
    try:
        await owner.execute(
            "CREATE FUNCTION statusek_later() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 7';"
            " REVOKE ALL ON FUNCTION statusek_later() FROM PUBLIC"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await worker.fetchval("SELECT statusek_later()")
        await grant_worker(granted.owner_url, granted.role)
        assert await worker.fetchval("SELECT statusek_later()") == 7
    finally:
        await worker.close()
        await owner.close()


async def test_cli_migrate_grant_gives_the_worker_privileges(database: Database) -> None:
    """`statusek migrate --grant ROLE` run as the owner gives the role the worker's privileges."""
    done = await statusek(env_for(database.owner_url), "migrate", "--grant", database.role)
    assert done.returncode == 0, done.stderr
    assert f"granted {database.role} the worker's privileges" in done.stdout
    owner = await asyncpg.connect(database.owner_url)
    try:
        rights = {
            p: await owner.fetchval("SELECT has_table_privilege($1, 'events', $2)", database.role, p)
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
    finally:
        await owner.close()
    assert rights == {"SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False, "TRUNCATE": False}


async def test_cli_migrate_grant_refuses_an_unknown_role(database: Database) -> None:
    """`statusek migrate --grant` names a missing role and exits 1."""
    done = await statusek(env_for(database.owner_url), "migrate", "--grant", "statusek_no_such_role")
    assert done.returncode == 1
    assert "role 'statusek_no_such_role' does not exist" in done.stderr


async def test_worker_applies_commands_as_the_granted_role(
    granted: Database, vhost: str, models_path: str
) -> None:
    """A worker connected as the granted role starts without DDL and applies commands end to end."""
    settings = worker_settings(granted.role_url, vhost, models_path, migrate_on_start=False)
    async with running_worker(settings), await Client.connect(vhost) as client:
        token = await client.create("2-POINT LINE TASK")
        await client.set_status(token, "STARTED")
    owner = await asyncpg.connect(granted.owner_url)
    try:
        kinds = [
            (r["kind"], r["status_name"])
            for r in await owner.fetch(
                "SELECT kind, status_name FROM events WHERE instance_token = $1 ORDER BY seq",
                uuid.UUID(token),
            )
        ]
        # The relay, as the same role, published and deleted the outbox rows.
        outbox = await owner.fetchval(
            "SELECT count(*) FROM outbox WHERE instance_token = $1", uuid.UUID(token)
        )
    finally:
        await owner.close()
    assert kinds == [("created", None), ("status", "STARTED")]
    assert outbox == 0


async def test_worker_refuses_a_schema_behind_when_migrate_on_start_is_off(
    granted: Database, vhost: str, models_path: str
) -> None:
    """With migrate_on_start off, a worker on a database missing a migration stops and says how to migrate."""
    await forget_last_migration(granted.owner_url)
    settings = worker_settings(granted.owner_url, vhost, models_path, migrate_on_start=False)
    with pytest.raises(SchemaNotReady) as refused:
        async with running_worker(settings):
            pytest.fail("the worker started")
    message = str(refused.value)
    assert f"missing migrations {LAST_MIGRATION}" in message
    assert "STATUSEK_MIGRATE_ON_START is off" in message
    assert "run `statusek migrate` as the owner role, then `statusek migrate --grant" in message


async def test_worker_without_ddl_rights_refuses_a_schema_behind(
    granted: Database, vhost: str, models_path: str
) -> None:
    """With migrate_on_start on, a worker whose role may not migrate stops and names the missing migration."""
    await forget_last_migration(granted.owner_url)
    settings = worker_settings(granted.role_url, vhost, models_path, migrate_on_start=True)
    with pytest.raises(SchemaNotReady) as refused:
        async with running_worker(settings):
            pytest.fail("the worker started")
    message = str(refused.value)
    assert f"missing migrations {LAST_MIGRATION} and this role may not migrate" in message
    assert f"then `statusek migrate --grant {granted.role}`" in message


async def test_worker_process_logs_one_line_when_the_schema_is_behind(granted: Database) -> None:
    """`statusek worker` with STATUSEK_MIGRATE_ON_START=false exits with one error line naming the fix."""
    await forget_last_migration(granted.owner_url)
    env = env_for(granted.role_url, STATUSEK_MIGRATE_ON_START="false", STATUSEK_OPS_PORT="0")
    done = await statusek(env, "worker")
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("level") in ("error", "critical")]
    assert done.returncode != 0
    assert len(errors) == 1, done.stderr
    assert LAST_MIGRATION in errors[0]["error"]
    assert "`statusek migrate` as the owner role" in errors[0]["error"]


async def test_worker_with_ungranted_role_names_the_tables(database: Database) -> None:
    """A role given USAGE but no table privileges is refused at start with the grant to run."""
    owner = await asyncpg.connect(database.owner_url)
    try:
        await owner.execute(f"GRANT USAGE ON SCHEMA public TO {database.role}")
    finally:
        await owner.close()
    with pytest.raises(
        SchemaNotReady, match=r"lacks privileges on tables .*events.*statusek migrate --grant"
    ):
        await ensure_current(database.role_url, migrate_on_start=False)


async def test_missing_database_is_created_and_migrated_at_start(services: Services) -> None:
    """With migrate_on_start (the default), a database that does not exist is created and migrated."""
    assert Settings.model_fields["migrate_on_start"].default is True
    name = f"statusek_test_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(services.database_url)._replace(path="/" + name))
    try:
        assert await ensure_current(url, migrate_on_start=True) == [n for n, _sql in migrations()]
        assert await ensure_current(url, migrate_on_start=False) == []
    finally:
        admin = await asyncpg.connect(services.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
