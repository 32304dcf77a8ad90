"""A relay's own Postgres session: it holds the relay's outbox partitions (see `app.relay`).

A session-level advisory lock per partition, on a connection of its own (not
the pool's): the relay keeps a partition while this session lives, and loses
every partition at once when it ends. Rows are read through the same session,
so a successful read proves the session, and with it the locks, alive at that
moment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from statusek.adapters.postgres.connect import ConnectOptions, connect
from statusek.adapters.postgres.errors import translated
from statusek.adapters.postgres.store import OUTBOX_TAKE, RELAY_LOCK, OutboxRow, Store
from statusek.core.views import Notification


class RelaySession:
    def __init__(self, conn: asyncpg.Connection):
        self._conn = conn

    @classmethod
    async def open(cls, store: Store) -> RelaySession:
        # The store's own DSN and bounds: the same database, timeouts and keepalives as its pool.
        options: ConnectOptions = getattr(store, "_options", None) or ConnectOptions()
        dsn: str = store._dsn
        async with translated():
            conn = await connect(dsn, options)
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return cls(conn)

    @property
    def alive(self) -> bool:
        return not self._conn.is_closed()

    @property
    def backend_pid(self) -> int:
        return int(self._conn.get_server_pid())

    async def acquire(self, partition: int) -> bool:
        """Take `partition` for this session, unless another session holds it."""
        async with translated():
            return bool(
                await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", RELAY_LOCK, partition)
            )

    async def acquire_free(self, partitions: Sequence[int]) -> list[int]:
        """Take every one of `partitions` no other session holds, in one round trip; those taken."""
        async with translated():
            rows = await self._conn.fetch(
                "SELECT p FROM unnest($2::int[]) AS p WHERE pg_try_advisory_lock($1, p) ORDER BY p",
                RELAY_LOCK,
                list(partitions),
            )
        return [int(r["p"]) for r in rows]

    async def verify(self) -> None:
        """Raise unless the session (and so every lock it holds) is still there."""
        async with translated():
            await self._conn.fetchval("SELECT 1")

    async def take(self, partition: int, limit: int, *, after: int, grace: float) -> list[OutboxRow]:
        """The oldest rows of a held partition after id `after` (autocommit: no transaction stays open)."""
        async with translated():
            rows = await self._conn.fetch(OUTBOX_TAKE, partition, after, limit, grace)
        return [
            OutboxRow(
                r["id"],
                Notification(
                    type=r["type"],
                    message_id=r["message_id"],
                    instance_token=str(r["instance_token"]) if r["instance_token"] else None,
                    body=r["body"],
                    headers=r["headers"],
                ),
                in_flight=r["in_flight"],
            )
            for r in rows
        ]

    def close(self) -> None:
        """End the session at once: Postgres releases its locks."""
        if not self._conn.is_closed():
            self._conn.terminate()
