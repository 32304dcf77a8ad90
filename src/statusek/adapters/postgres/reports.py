"""Reads for reports: the daily aggregates of purged days, the instances still kept, ping summaries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID

from statusek.adapters.postgres.retention import TIMELINE_COLUMNS, Timelines, slas
from statusek.adapters.postgres.store import Store
from statusek.core.codes import FinishReason
from statusek.core.messages import PingSummary
from statusek.core.model import StatusModel, parse_model
from statusek.core.report import DailyKey, DailyRow, Slas, Timeline


@dataclass(frozen=True, slots=True)
class ReportInputs:
    latest: StatusModel | None  # the object's latest model version; None: no model of that name
    daily: list[DailyRow]  # aggregates of purged instances
    live: list[Timeline]  # finished instances still kept
    slas: Slas  # of every version met


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def report_inputs(
    store: Store, object_name: str, since: date | None, until: date | None
) -> ReportInputs:
    """What `get-report` adds up for `object_name`, finished from day `since` to day `until` (UTC,
    inclusive); nothing but `latest=None` when no model of that name was ever stored.

    One REPEATABLE READ snapshot, so an instance purged meanwhile is counted once: live or folded.
    """
    low = _start_of(since) if since else None
    high = _start_of(until + timedelta(days=1)) if until else None
    async with store.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            "SELECT version, definition FROM model_versions WHERE object_name = $1"
            " ORDER BY version DESC LIMIT 1",
            object_name,
        )
        if row is None:
            return ReportInputs(None, [], [], {})
        latest = parse_model(row["definition"], source="model_versions", version=row["version"])
        daily = [
            DailyRow(
                DailyKey(
                    object_name,
                    r["model_version"],
                    r["day"],
                    FinishReason(r["finish_reason"]),
                    r["status_name"],
                ),
                r["count"],
                r["sum_seconds"],
                r["min_seconds"],
                r["max_seconds"],
                tuple(r["buckets"]),
                r["sla_breaches"],
            )
            for r in await conn.fetch(
                "SELECT * FROM report_daily WHERE object_name = $1"
                " AND day >= coalesce($2::date, '-infinity') AND day <= coalesce($3::date, 'infinity')",
                object_name,
                since,
                until,
            )
        ]
        # Streamed, and turned into timelines off the event loop: a range may hold many instances.
        builder = Timelines()
        cursor = await conn.cursor(
            f"SELECT {TIMELINE_COLUMNS}, e.status_name, e.occurred_at FROM instances i"
            " LEFT JOIN events e ON e.instance_token = i.token AND e.kind = 'status'"
            " WHERE i.object_name = $1 AND i.finished_at IS NOT NULL"
            " AND i.finished_at >= coalesce($2::timestamptz, '-infinity')"
            " AND i.finished_at < coalesce($3::timestamptz, 'infinity')"
            " ORDER BY i.token, e.seq",
            object_name,
            low,
            high,
        )
        while rows := await cursor.fetch(5000):
            await asyncio.to_thread(_add_all, builder, rows)
        live = builder.finish()
        keys = {(object_name, r.key.model_version) for r in daily} | {
            (t.object_name, t.model_version) for t in live
        }
        by_version = await slas(conn, store.model_cache, keys)
    return ReportInputs(latest, daily, live, by_version)


def _add_all(builder: Timelines, rows: Iterable[Mapping[str, object]]) -> None:
    for row in rows:
        builder.add(row)


async def ping_summary(store: Store, token: UUID) -> list[PingSummary]:
    """The pings of an instance per sender (the event's actor; `anonymous` when none is recorded),
    the sender of the latest ping first."""
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (sender) sender, count, first_at, occurred_at AS last_at, message FROM ("
            "  SELECT coalesce(actor, 'anonymous') AS sender, seq, occurred_at, message,"
            "   count(*) OVER w AS count, min(occurred_at) OVER w AS first_at"
            "  FROM events WHERE instance_token = $1 AND kind = 'ping'"
            "  WINDOW w AS (PARTITION BY coalesce(actor, 'anonymous'))"
            ") AS pings ORDER BY sender, seq DESC",
            token,
        )
    summaries = [
        PingSummary(
            sender=r["sender"],
            count=r["count"],
            first_at=r["first_at"],
            last_at=r["last_at"],
            last_message=r["message"],
        )
        for r in rows
    ]
    return sorted(summaries, key=lambda s: s.last_at, reverse=True)
