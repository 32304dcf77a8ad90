"""Which worker replicas are running, from session advisory locks in Postgres.

Each replica holds one lock keyed by a random number for as long as its
connection lives, so a replica that dies leaves the membership as soon as
Postgres notices its connection is gone; nothing has to expire.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import asyncpg
import structlog

from statusek.adapters.postgres.connect import ConnectOptions, connect
from statusek.adapters.postgres.errors import translated
from statusek.core.errors import StoreFailure, TransientError

log = structlog.get_logger(__name__)

MEMBER_LOCK = 0x5354_4D42  # arbitrary int4, the lock space of replica membership

_MEMBERS_SQL = """
SELECT objid::bigint AS key FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def new_member_key() -> int:
    """A replica's key: random, so replicas need no configuration to tell themselves apart."""
    return secrets.randbelow(2**31 - 1) + 1


async def hold_membership(
    dsn: str,
    key: int,
    on_members: Callable[[frozenset[int]], None],
    *,
    every: float,
    retry_cap: float,
    options: ConnectOptions | None = None,
) -> None:
    """Be a member under `key` and report the set of members every `every` seconds, forever.

    While the connection is down nothing is reported: the last membership
    stands, and this replica may meanwhile be missing from others' view.
    """
    delay = 0.1
    while True:
        conn: asyncpg.Connection | None = None
        try:
            async with translated():
                # Bounded and kept alive like the pool: a black-holed database ends this
                # replica's membership, so the others take its partitions.
                conn = await connect(dsn, options or ConnectOptions())
                await conn.execute("SELECT pg_advisory_lock($1, $2)", MEMBER_LOCK, key)
                delay = 0.1
                while True:
                    async with asyncio.timeout(every * 5):
                        rows = await conn.fetch(_MEMBERS_SQL, MEMBER_LOCK)
                    on_members(frozenset(int(r["key"]) for r in rows))
                    await asyncio.sleep(every)
        except (TransientError, StoreFailure) as e:
            # Membership only balances work; without it the replica keeps what it holds.
            log.warning("replica membership lost, reconnecting", error=str(e))
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()
        await asyncio.sleep(delay)
        delay = min(retry_cap, delay * 2)
