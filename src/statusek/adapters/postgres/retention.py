"""Retention: finished instances past their retention are folded into daily aggregates, then purged.

One batch is one short transaction: take the purge lock (one purger at a time across replicas,
`pg_try_advisory_xact_lock`), lock up to `limit` of the oldest finished instances of an object
(`FOR UPDATE SKIP LOCKED`, so a command holding one is never waited for), add their durations to
`report_daily`, and delete them with their events through `statusek_purge` (migration 006), the
only way out of the append-only event log. Instances whose notifications are not sent yet wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from statusek.adapters.postgres.store import Store
from statusek.core.codes import FinishReason
from statusek.core.model import StatusModel, parse_model
from statusek.core.report import DailyRow, Timeline, fold

PURGE_LOCK = 0x5354_5055_5247_45  # arbitrary, shared by every replica's purger

TIMELINE_COLUMNS = "i.token, i.object_name, i.model_version, i.created_at, i.finished_at, i.finish_reason"


@dataclass(frozen=True, slots=True)
class PurgeBatch:
    locked: int  # instances this batch took (all of them purged)
    last_finished_at: datetime | None  # the finish time of the newest of them: where the next batch starts


async def latest_models(
    conn: asyncpg.Connection, cache: dict[tuple[str, int], StatusModel]
) -> list[StatusModel]:
    """The latest version of every model stored."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (object_name) object_name, version, definition FROM model_versions"
        " ORDER BY object_name, version DESC"
    )
    return [_model(cache, r) for r in rows]


def _model(cache: dict[tuple[str, int], StatusModel], row: Mapping[str, Any]) -> StatusModel:
    key = (row["object_name"], row["version"])
    if key not in cache:
        cache[key] = parse_model(row["definition"], source="model_versions", version=row["version"])
    return cache[key]


async def retention_by_object(store: Store, default: float | None) -> dict[str, float]:
    """Seconds each object's finished instances are kept: its latest version's `retention`, else
    `default`. Objects kept forever are left out."""
    async with store.connection() as conn:
        models = await latest_models(conn, store.model_cache)
    out = {}
    for model in models:
        seconds = model.retention if model.retention is not None else default
        if seconds is not None:
            out[model.object_name] = seconds
    return out


async def slas(
    conn: asyncpg.Connection, cache: dict[tuple[str, int], StatusModel], keys: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], float | None]:
    """The SLA of each (object, version)."""
    missing = [k for k in set(keys) if k not in cache]
    if missing:
        rows = await conn.fetch(
            "SELECT m.object_name, m.version, m.definition FROM model_versions m"
            " JOIN unnest($1::text[], $2::int[]) AS k(name, version)"
            " ON m.object_name = k.name AND m.version = k.version",
            [k[0] for k in missing],
            [k[1] for k in missing],
        )
        for r in rows:
            _model(cache, r)
    return {k: cache[k].sla for k in set(keys) if k in cache}


class Timelines:
    """Timelines built from rows of one instance after another: `TIMELINE_COLUMNS`, then one of its
    status events' `status_name` and `occurred_at` per row in seq order (NULL when it has none)."""

    def __init__(self) -> None:
        self.done: list[Timeline] = []
        self._head: Mapping[str, Any] | None = None
        self._statuses: list[tuple[str, datetime]] = []

    def add(self, row: Mapping[str, Any]) -> None:
        if self._head is None or row["token"] != self._head["token"]:
            self._flush()
            self._head, self._statuses = row, []
        if row["status_name"] is not None:
            self._statuses.append((row["status_name"], row["occurred_at"]))

    def _flush(self) -> None:
        if self._head is not None:
            self.done.append(_timeline(self._head, self._statuses))
            self._head = None

    def finish(self) -> list[Timeline]:
        self._flush()
        return self.done


def timelines(rows: Iterable[Mapping[str, Any]]) -> list[Timeline]:
    builder = Timelines()
    for row in rows:
        builder.add(row)
    return builder.finish()


def _timeline(row: Mapping[str, Any], statuses: Sequence[tuple[str, datetime]]) -> Timeline:
    return Timeline(
        object_name=row["object_name"],
        model_version=row["model_version"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        finish_reason=FinishReason(row["finish_reason"]),
        statuses=tuple(statuses),
    )


async def add_daily(conn: asyncpg.Connection, rows: Sequence[DailyRow]) -> None:
    """Add aggregates to report_daily (a new row, or summed into the stored one)."""
    await conn.executemany(
        "INSERT INTO report_daily (object_name, day, model_version, finish_reason, status_name, count,"
        " sum_seconds, min_seconds, max_seconds, buckets, sla_breaches)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (object_name, day, model_version, finish_reason, status_name) DO UPDATE SET"
        " count = report_daily.count + excluded.count,"
        " sum_seconds = report_daily.sum_seconds + excluded.sum_seconds,"
        " min_seconds = least(report_daily.min_seconds, excluded.min_seconds),"
        " max_seconds = greatest(report_daily.max_seconds, excluded.max_seconds),"
        " buckets = statusek_add_buckets(report_daily.buckets, excluded.buckets),"
        " sla_breaches = report_daily.sla_breaches + excluded.sla_breaches",
        [
            (
                r.key.object_name,
                r.key.day,
                r.key.model_version,
                r.key.finish_reason.value,
                r.key.status_name,
                r.count,
                r.total,
                r.low,
                r.high,
                list(r.buckets),
                r.sla_breaches,
            )
            for r in rows
        ],
    )


async def purge_batch(
    store: Store, object_name: str, retention: float, limit: int, after: datetime | None = None
) -> PurgeBatch | None:
    """Fold and purge up to `limit` of the oldest instances of `object_name` finished more than
    `retention` seconds ago (and at or after `after`). None: another replica is purging now."""
    async with store.connection() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PURGE_LOCK):
            return None
        rows = await conn.fetch(
            "SELECT token, finished_at FROM instances i"
            " WHERE object_name = $1 AND finished_at IS NOT NULL"
            " AND finished_at < now() - make_interval(secs => $2)"
            " AND finished_at >= coalesce($3::timestamptz, '-infinity')"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.instance_token = i.token)"
            " ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED",
            object_name,
            retention,
            after,
            limit,
        )
        if not rows:
            return PurgeBatch(0, None)
        tokens = [r["token"] for r in rows]
        events = await conn.fetch(
            f"SELECT {TIMELINE_COLUMNS}, e.status_name, e.occurred_at FROM instances i"
            " LEFT JOIN events e ON e.instance_token = i.token AND e.kind = 'status'"
            " WHERE i.token = ANY($1::uuid[]) ORDER BY i.token, e.seq",
            tokens,
        )
        versions = await slas(
            conn, store.model_cache, {(r["object_name"], r["model_version"]) for r in events}
        )
        # Tens of milliseconds of pure Python per thousand instances: off the event loop, so that
        # the commands and queries of this worker keep their turn.
        daily = await asyncio.to_thread(lambda: fold(timelines(events), versions))
        await add_daily(conn, daily)
        await conn.fetchval("SELECT statusek_purge($1::uuid[])", tokens)
    return PurgeBatch(len(rows), max(r["finished_at"] for r in rows))
