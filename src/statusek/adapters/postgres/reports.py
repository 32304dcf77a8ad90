"""Reads for reports: the daily aggregates of purged days, the instances still kept, ping summaries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import asyncpg

from statusek.adapters.postgres.retention import slas
from statusek.adapters.postgres.store import Store
from statusek.core.codes import FinishReason
from statusek.core.errors import StoreFailure
from statusek.core.messages import PingSummary
from statusek.core.model import StatusModel, parse_model
from statusek.core.report import (
    BUCKETS_PER_OCTAVE,
    LOWEST,
    MAX_BUCKET,
    DailyKey,
    DailyRow,
    LiveFigures,
    Slas,
    Summary,
)


class ReportTooSlow(StoreFailure):
    """A report's SQL ran past REPORT_TIMEOUT: the range holds more than a report is allowed to read."""


# Seconds each statement of a report may run: a report over years of instances must not hold a
# connection and a core of Postgres from the commands.
REPORT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ReportInputs:
    latest: StatusModel | None  # the object's latest model version; None: no model of that name
    daily: list[DailyRow]  # aggregates of purged instances
    live: LiveFigures  # finished instances still kept, added up by the database
    slas: Slas  # of every version met


# The instances a report counts ($1 object, $2 and $3 the first and last day of finish, UTC,
# either NULL for no bound), with their durations in exact seconds (numeric, as Python's
# timedelta.total_seconds() gives them before rounding to a float).
_FINISHED = (
    "SELECT i.token, i.model_version, i.finish_reason, i.created_at,"
    " extract(epoch FROM i.finished_at) - extract(epoch FROM i.created_at) AS d"
    " FROM instances i WHERE i.object_name = $1 AND i.finished_at IS NOT NULL"
    " AND i.finished_at >= coalesce($2::date::timestamp AT TIME ZONE 'UTC', '-infinity')"
    " AND i.finished_at < coalesce(($3::date + 1)::timestamp AT TIME ZONE 'UTC', 'infinity')"
)
# Their status events' durations: from the previous status event, or the creation for the first.
_STATUS_DURATIONS = (
    f"WITH f AS ({_FINISHED})"
    " SELECT e.status_name, extract(epoch FROM e.occurred_at) - extract(epoch FROM"
    "  lag(e.occurred_at, 1, f.created_at) OVER (PARTITION BY e.instance_token ORDER BY e.seq)) AS d"
    " FROM f JOIN events e ON e.instance_token = f.token AND e.kind = 'status'"
)
# count, sum, min, max and the nearest-rank p50 and p95: percentile_disc takes the first value
# whose rank reaches ceil(fraction * count), as core.report.nearest_rank does.
_FIGURES = (
    "count(*) AS count, sum(d)::float8 AS total, min(d)::float8 AS low, max(d)::float8 AS high,"
    " (percentile_disc(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY d))::float8[] AS pct"
)
# core.report.bucket_of, in SQL.
_BUCKET = (
    f"CASE WHEN d < {LOWEST} THEN 0 ELSE least({MAX_BUCKET},"
    f" 1 + floor(ln(d::float8 / {LOWEST}) / ln(2.0::float8) * {BUCKETS_PER_OCTAVE}))::int END"
)
# Per finish reason, and for them all (the row whose reason is NULL), with the SLA breaches
# ($4 model versions, $5 their SLAs in seconds, NULL for none).
_INSTANCE_FIGURES = (
    f"WITH f AS ({_FINISHED})"
    f" SELECT f.finish_reason, grouping(f.finish_reason) = 1 AS every, {_FIGURES},"
    " count(*) FILTER (WHERE f.d::float8 > s.sla) AS breaches,"
    " array_agg(DISTINCT f.model_version) AS versions"
    " FROM f LEFT JOIN unnest($4::int[], $5::float8[]) AS s(version, sla) ON s.version = f.model_version"
    " GROUP BY GROUPING SETS ((f.finish_reason), ())"
)
_INSTANCE_BUCKETS = (
    f"WITH f AS ({_FINISHED})"
    f" SELECT finish_reason, grouping(finish_reason) = 1 AS every, b, count(*) AS n"
    f" FROM (SELECT finish_reason, {_BUCKET} AS b FROM f) AS x"
    " GROUP BY GROUPING SETS ((finish_reason, b), (b))"
)
_STATUS_FIGURES = (
    f"WITH s AS ({_STATUS_DURATIONS}) SELECT status_name, {_FIGURES} FROM s GROUP BY status_name"
)
_STATUS_BUCKETS = (
    f"WITH s AS ({_STATUS_DURATIONS})"
    f" SELECT status_name, {_BUCKET} AS b, count(*) AS n FROM s GROUP BY status_name, b"
)


async def report_inputs(
    store: Store, object_name: str, since: date | None, until: date | None
) -> ReportInputs:
    """What `get-report` adds up for `object_name`, finished from day `since` to day `until` (UTC,
    inclusive); nothing but `latest=None` when no model of that name was ever stored.

    One REPEATABLE READ snapshot, so an instance purged meanwhile is counted once: live or folded.
    The instances still kept are added up by Postgres (a few rows per finish reason and status),
    so the worker's memory does not grow with their number; each statement has REPORT_TIMEOUT.
    """
    async with store.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(REPORT_TIMEOUT * 1000)}")
        try:
            return await _read(conn, store, object_name, since, until)
        except asyncpg.QueryCanceledError as e:
            # Not a passing trouble to retry: the same range takes as long the next time.
            raise ReportTooSlow(
                f"get-report read for more than {REPORT_TIMEOUT:g} s: ask for a shorter since..until range"
            ) from e


async def _read(
    conn: asyncpg.Connection, store: Store, object_name: str, since: date | None, until: date | None
) -> ReportInputs:
    versions = await conn.fetch(
        "SELECT version, definition FROM model_versions WHERE object_name = $1 ORDER BY version DESC",
        object_name,
    )
    if not versions:
        return ReportInputs(None, [], LiveFigures(), {})
    latest = parse_model(versions[0]["definition"], source="model_versions", version=versions[0]["version"])
    every = await slas(conn, store.model_cache, {(object_name, r["version"]) for r in versions})
    daily = await _daily(conn, object_name, since, until)
    live = await _live(conn, object_name, since, until, every, daily)
    met = {r.key.model_version for r in daily} | live.versions
    return ReportInputs(latest, daily, live, {(object_name, v): every.get((object_name, v)) for v in met})


async def _daily(
    conn: asyncpg.Connection, object_name: str, since: date | None, until: date | None
) -> list[DailyRow]:
    """The daily aggregates of the purged instances, days `since` to `until`."""
    return [
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


async def _live(
    conn: asyncpg.Connection,
    object_name: str,
    since: date | None,
    until: date | None,
    every: Slas,
    daily: list[DailyRow],
) -> LiveFigures:
    """The finished instances still kept, added up by Postgres, with the breaches of `every` SLA."""
    versions_known = sorted(v for (_, v) in every)
    instance_rows = await conn.fetch(
        _INSTANCE_FIGURES,
        object_name,
        since,
        until,
        versions_known,
        [every[(object_name, v)] for v in versions_known],
    )
    status_rows = await conn.fetch(_STATUS_FIGURES, object_name, since, until)
    # Histograms only where daily aggregates join the kept instances' figures: otherwise the
    # exact percentiles are all a report gives.
    instance_buckets: dict[str | None, tuple[int, ...]] = {}
    status_buckets: dict[str | None, tuple[int, ...]] = {}
    if daily:
        instance_buckets, status_buckets = await _live_histograms(conn, object_name, since, until)
    whole = next((r for r in instance_rows if r["every"] and r["count"]), None)
    return LiveFigures(
        whole=_summary(whole, instance_buckets.get(None), daily) if whole else None,
        by_reason={
            FinishReason(r["finish_reason"]): _summary(r, instance_buckets.get(r["finish_reason"]), daily)
            for r in instance_rows
            if not r["every"]
        },
        by_status={
            r["status_name"]: _summary(r, status_buckets.get(r["status_name"]), daily) for r in status_rows
        },
        sla_breaches=whole["breaches"] if whole else 0,
        versions=frozenset(whole["versions"]) if whole else frozenset(),
    )


async def _live_histograms(
    conn: asyncpg.Connection, object_name: str, since: date | None, until: date | None
) -> tuple[dict[str | None, tuple[int, ...]], dict[str | None, tuple[int, ...]]]:
    """The kept instances' bucket counts: per finish reason (None: every reason), and per status."""
    by_reason = _histograms(
        (None if r["every"] else r["finish_reason"], r["b"], r["n"])
        for r in await conn.fetch(_INSTANCE_BUCKETS, object_name, since, until)
    )
    by_status = _histograms(
        (r["status_name"], r["b"], r["n"])
        for r in await conn.fetch(_STATUS_BUCKETS, object_name, since, until)
    )
    return by_reason, by_status


def _histograms(rows: Iterable[tuple[str | None, int, int]]) -> dict[str | None, tuple[int, ...]]:
    counts: dict[str | None, list[int]] = {}
    for key, bucket, n in rows:
        found = counts.setdefault(key, [])
        if bucket >= len(found):
            found.extend([0] * (bucket + 1 - len(found)))
        found[bucket] += n
    return {key: tuple(c) for key, c in counts.items()}


def _summary(row: Mapping[str, Any], buckets: tuple[int, ...] | None, daily: list[DailyRow]) -> Summary:
    p50, p95 = row["pct"]
    return Summary(
        count=row["count"],
        total=row["total"],
        low=row["low"],
        high=row["high"],
        p50=p50,
        p95=p95,
        buckets=(buckets or ()) if daily else None,
    )


async def ping_summary(store: Store, token: UUID, up_to_seq: int) -> list[PingSummary]:
    """The pings of an instance per sender (the event's actor; `anonymous` when none is recorded),
    the sender of the latest ping first.

    Only events up to `up_to_seq`, the last of the state the caller read: events are never
    changed, so the summary agrees with that state even though it is read after it.
    """
    async with store.connection() as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (sender) sender, count, first_at, occurred_at AS last_at, message FROM ("
            "  SELECT coalesce(actor, 'anonymous') AS sender, seq, occurred_at, message,"
            "   count(*) OVER w AS count, min(occurred_at) OVER w AS first_at"
            "  FROM events WHERE instance_token = $1 AND kind = 'ping' AND seq <= $2"
            "  WINDOW w AS (PARTITION BY coalesce(actor, 'anonymous'))"
            ") AS pings ORDER BY sender, seq DESC",
            token,
            up_to_seq,
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
