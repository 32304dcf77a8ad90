"""Store.transaction against the real Postgres: BEGIN and the fence in one round trip, notifications
sent with the COMMIT, and a pooled connection handed back without asyncpg's reset query."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from statusek.adapters.model_files import load_models
from statusek.adapters.postgres.store import DEADLINE_CHANNEL, PARTITION_FENCE, Store
from statusek.core.errors import StoreFailure
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(database_url: str, models_path: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url, min_size=1, max_size=1)
    models, errors = load_models(Path(p) for p in models_path.split(":"))
    assert not errors
    await store.sync_models(models)
    yield store
    await store.close()


async def test_a_fenced_transaction_holds_its_partition_lock_until_commit(
    store: Store, db: asyncpg.Connection
) -> None:
    """While a fenced transaction is open, its partition's advisory lock is held, and then it is not."""
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2"
    async with store.transaction(fence=7) as tx:
        await tx.now()
        assert await db.fetchval(held, PARTITION_FENCE, 7) == 1
    assert await db.fetchval(held, PARTITION_FENCE, 7) == 0


async def test_notifications_of_a_transaction_arrive_on_commit(store: Store, database_url: str) -> None:
    """A NOTIFY queued in a transaction reaches a listener once it commits, with its payload."""
    listener = await asyncpg.connect(database_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(DEADLINE_CHANNEL, lambda *args: got.put_nowait(args[3]))
    try:
        async with store.transaction(fence=0) as tx:
            tx.notify(DEADLINE_CHANNEL, "it's 2030-01-01T00:00:00+00:00 \\ soon")
            await asyncio.sleep(0.2)
            assert got.empty()
        assert await asyncio.wait_for(got.get(), 5) == "it's 2030-01-01T00:00:00+00:00 \\ soon"
    finally:
        await listener.close()


async def test_a_failed_transaction_rolls_back_and_leaves_no_transaction_open(store: Store) -> None:
    """A statement refused inside a transaction rolls it all back, and the pool's connection is usable."""
    with pytest.raises(StoreFailure):
        async with store.transaction(fence=0) as tx:
            await tx._conn.execute("CREATE TEMP TABLE t20 (x int) ON COMMIT DROP")
            await tx._conn.execute("SELECT 1/0")
    async with store.transaction() as tx:
        assert await tx._conn.fetchval("SELECT to_regclass('pg_temp.t20')") is None
        assert await tx._conn.fetchval("SELECT 1") == 1


async def test_a_commit_that_postgres_turns_into_a_rollback_raises(store: Store) -> None:
    """Postgres answers COMMIT of a failed transaction with ROLLBACK and no error: the store says so."""
    with pytest.raises(StoreFailure, match="rolled the transaction back"):
        async with store.transaction() as tx:
            with contextlib.suppress(asyncpg.DivisionByZeroError):  # as a careless caller would
                await tx._conn.execute("SELECT 1/0")


async def test_a_session_setting_made_outside_a_transaction_is_reset_on_release(store: Store) -> None:
    """A pooled connection used without Store.transaction still gets asyncpg's reset on release."""
    async with store.connection() as conn:
        await conn.execute("SET application_name = 'left-behind'")
    async with store.connection() as conn:
        assert await conn.fetchval("SHOW application_name") != "left-behind"


async def test_closing_cuts_a_connection_still_held_after_the_timeout(
    database_url: str, db: asyncpg.Connection
) -> None:
    """A transaction left open by a stuck task does not keep close() waiting: it is cut, rolled back."""
    store = await Store.open(database_url, min_size=1, max_size=1)
    entered = asyncio.Event()

    async def stuck() -> None:
        async with store.transaction(fence=9) as tx:
            await tx.now()
            entered.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(stuck())
    try:
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(store.close(timeout=0.5), 5)
        # Cut on the server too: its transaction's fence lock is gone.
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = 9"
        await eventually(lambda: db.fetchval(held, PARTITION_FENCE), 5, equals=0)
    finally:
        holder.cancel()
        with contextlib.suppress(BaseException):
            await holder
