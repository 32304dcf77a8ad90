"""Timing reports of finished instances, and the daily aggregates that keep them after a purge.

Definitions (docs/retention.md, "Reports"):

- The duration of an instance runs from its creation to its finish.
- The duration of a status runs from the previous status event of the instance (or its creation,
  for the first status) to this status event. Pings and the finish are not statuses.
- p50 and p95 are nearest-rank percentiles: the smallest duration d such that at least 50 % (95 %)
  of the durations are at most d. They are exact when computed from the durations themselves.
- A purged instance lives on in the daily aggregates of its finish day (UTC): count, sum, min, max
  and a histogram of log-scaled buckets, `BUCKETS_PER_OCTAVE` per doubling from `LOWEST` seconds.
  A percentile that needs a histogram is the geometric middle of the bucket holding its rank,
  clamped to the min and max: within `RELATIVE_ERROR` (4.43 %) of the exact value, or
  `LOWEST / 2` seconds for durations under `LOWEST`. Count, sum (mean), max and SLA breaches stay
  exact.

Everything here is pure: the store reads rows into `Timeline` and `DailyRow`, this module adds
them up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from statusek.core.codes import Code, FinishReason
from statusek.core.instance import Event, EventKind
from statusek.core.messages import (
    DurationFigures,
    ReasonFigures,
    Reply,
    ReportData,
    ReportQuery,
    StatusFigures,
)
from statusek.core.model import StatusModel

BUCKETS_PER_OCTAVE = 8
LOWEST = 0.001  # seconds: bucket 0 holds every duration below it
# Ten years fit below the last bucket (1 + 8 * log2(3.2e11) is 306); the last one is open-ended.
MAX_BUCKET = 320
GROWTH = 2 ** (1 / BUCKETS_PER_OCTAVE)
RELATIVE_ERROR = math.sqrt(GROWTH) - 1  # 0.0443
# The key of the create-to-finish row among the per-status rows of the daily aggregates.
INSTANCE = ""


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration: 0 below LOWEST, then BUCKETS_PER_OCTAVE per doubling."""
    if seconds < LOWEST:
        return 0
    return min(MAX_BUCKET, 1 + math.floor(math.log2(seconds / LOWEST) * BUCKETS_PER_OCTAVE))


def bucket_bounds(index: int) -> tuple[float, float]:
    """[low, high) seconds of a bucket (the last one is open-ended: high is infinite)."""
    if index == 0:
        return 0.0, LOWEST
    high = math.inf if index >= MAX_BUCKET else LOWEST * GROWTH**index
    return LOWEST * GROWTH ** (index - 1), high


def bucket_estimate(index: int) -> float:
    """The value standing for a bucket: its geometric middle (half of LOWEST for bucket 0)."""
    if index == 0:
        return LOWEST / 2
    low = LOWEST * GROWTH ** (index - 1)
    return low * math.sqrt(GROWTH)


def nearest_rank(percent: float, count: int) -> int:
    """The 1-based rank of the `percent` percentile among `count` values."""
    return max(1, math.ceil(percent / 100 * count))


@dataclass
class Distribution:
    """Durations added one by one (exact) or merged from daily aggregates (histogram only)."""

    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    buckets: list[int] = field(default_factory=list)
    # Every duration, while nothing but single durations was added; None once a histogram was merged.
    samples: list[float] | None = field(default_factory=list)
    # The exact percentiles of the one Summary that is all this distribution holds.
    known: dict[float, float] | None = None

    @property
    def exact(self) -> bool:
        return self.samples is not None or self.known is not None

    def merge_summary(self, summary: Summary) -> None:
        """Add durations summed up elsewhere: exact while they are all there is, else a histogram."""
        if summary.count == 0:
            return
        if self.count == 0:
            self._extend(summary.count, summary.total, summary.low, summary.high)
            self.buckets = list(summary.buckets or ())
            self.samples, self.known = None, {50: summary.p50, 95: summary.p95}
            return
        if summary.buckets is None or (self.known is not None and not self.buckets):
            raise ValueError("a summary merged with other durations needs its histogram")
        self.merge_histogram(summary.count, summary.total, summary.low, summary.high, summary.buckets)

    def add(self, seconds: float) -> None:
        self._extend(1, seconds, seconds, seconds)
        index = bucket_of(seconds)
        if index >= len(self.buckets):
            self.buckets.extend([0] * (index + 1 - len(self.buckets)))
        self.buckets[index] += 1
        if self.samples is not None:
            self.samples.append(seconds)

    def merge_histogram(
        self, count: int, total: float, low: float, high: float, buckets: Sequence[int]
    ) -> None:
        """Add a daily aggregate: from now on percentiles are estimates."""
        if count == 0:
            return
        self._extend(count, total, low, high)
        if len(buckets) > len(self.buckets):
            self.buckets.extend([0] * (len(buckets) - len(self.buckets)))
        for i, n in enumerate(buckets):
            self.buckets[i] += n
        self.samples = None
        self.known = None

    def _extend(self, count: int, total: float, low: float, high: float) -> None:
        self.count += count
        self.total += total
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    def percentile(self, percent: float) -> float | None:
        """The nearest-rank percentile: exact from the samples, else estimated from the buckets."""
        if self.count == 0:
            return None
        if self.known is not None:
            return self.known[percent]
        rank = nearest_rank(percent, self.count)
        if self.samples is not None:
            return sorted(self.samples)[rank - 1]
        assert self.low is not None and self.high is not None
        seen = 0
        for index, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return min(self.high, max(self.low, bucket_estimate(index)))
        return self.high  # the buckets hold fewer than `count`: only if the stored rows disagree

    def figures(self) -> DurationFigures:
        return DurationFigures(**self._figures())

    def _figures(self) -> dict[str, object]:
        return {
            "count": self.count,
            "p50": self.percentile(50),
            "p95": self.percentile(95),
            "max": self.high,
            "mean": self.total / self.count if self.count else None,
            "exact": self.exact,
        }


@dataclass(frozen=True, slots=True)
class Timeline:
    """What a report needs of one finished instance: its times and its status events, in order."""

    object_name: str
    model_version: int
    created_at: datetime
    finished_at: datetime
    finish_reason: FinishReason
    statuses: tuple[tuple[str, datetime], ...] = ()

    @property
    def duration(self) -> float:
        return (self.finished_at - self.created_at).total_seconds()

    @property
    def day(self) -> date:
        """The day of the finish, in UTC: the day of the aggregates it is folded into."""
        return self.finished_at.astimezone(UTC).date()

    def status_durations(self) -> list[tuple[str, float]]:
        """(status, seconds since the previous status or the creation), in the order they were set."""
        out = []
        previous = self.created_at
        for name, at in self.statuses:
            out.append((name, (at - previous).total_seconds()))
            previous = at
        return out


def timeline(object_name: str, model_version: int, events: Iterable[Event]) -> Timeline:
    """The timeline of a finished instance from its events (any order; pings are ignored)."""
    ordered = sorted(events, key=lambda e: e.seq)
    created = next((e for e in ordered if e.kind is EventKind.CREATED), None)
    finished = next((e for e in ordered if e.kind is EventKind.FINISHED), None)
    if created is None or finished is None or finished.reason is None:
        raise ValueError("a timeline needs the created and the finished event")
    return Timeline(
        object_name=object_name,
        model_version=model_version,
        created_at=created.occurred_at,
        finished_at=finished.occurred_at,
        finish_reason=finished.reason,
        statuses=tuple(
            (e.status_name, e.occurred_at) for e in ordered if e.kind is EventKind.STATUS and e.status_name
        ),
    )


@dataclass(frozen=True, slots=True, order=True)
class DailyKey:
    object_name: str
    model_version: int
    day: date
    finish_reason: FinishReason
    status_name: str  # INSTANCE ("") for create-to-finish


@dataclass(frozen=True, slots=True)
class DailyRow:
    """One row of the daily aggregates (table report_daily)."""

    key: DailyKey
    count: int
    total: float
    low: float
    high: float
    buckets: tuple[int, ...]
    sla_breaches: int = 0


Slas = Mapping[tuple[str, int], float | None]


def breached(t: Timeline, slas: Slas) -> bool:
    sla = slas.get((t.object_name, t.model_version))
    return sla is not None and t.duration > sla


def histogram(values: Iterable[float]) -> list[int]:
    """Bucket counts of `values`, up to the highest bucket used."""
    counts: list[int] = []
    for index in map(bucket_of, values):
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
    return counts


PERCENTILES = (50, 95)  # the percentiles a report gives; a Summary holds exactly these


@dataclass(frozen=True, slots=True)
class Summary:
    """Durations added up where they are kept (the database), exactly: nearest-rank p50 and p95."""

    count: int
    total: float
    low: float
    high: float
    p50: float
    p95: float
    # Their histogram: needed only where daily aggregates join them (None: not asked for).
    buckets: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """The finished instances still kept, added up: what a report takes from them."""

    whole: Summary | None = None  # create -> finish, every reason
    by_reason: Mapping[FinishReason, Summary] = field(default_factory=dict)
    by_status: Mapping[str, Summary] = field(default_factory=dict)
    sla_breaches: int = 0
    versions: frozenset[int] = frozenset()  # the model versions they belong to


def summary(values: Sequence[float], *, buckets: bool = True) -> Summary:
    """The Summary of these durations (at least one), as the database computes it."""
    ordered = sorted(values)
    return Summary(
        count=len(ordered),
        total=math.fsum(ordered),
        low=ordered[0],
        high=ordered[-1],
        p50=ordered[nearest_rank(50, len(ordered)) - 1],
        p95=ordered[nearest_rank(95, len(ordered)) - 1],
        buckets=tuple(histogram(ordered)) if buckets else None,
    )


def summarize(timelines: Iterable[Timeline], slas: Slas) -> LiveFigures:
    """`LiveFigures` of timelines in memory: the reference for what the database adds up."""
    whole: list[float] = []
    by_reason: dict[FinishReason, list[float]] = {}
    by_status: dict[str, list[float]] = {}
    breaches = 0
    versions: set[int] = set()
    for t in timelines:
        whole.append(t.duration)
        by_reason.setdefault(t.finish_reason, []).append(t.duration)
        breaches += breached(t, slas)
        versions.add(t.model_version)
        for name, seconds in t.status_durations():
            by_status.setdefault(name, []).append(seconds)
    return LiveFigures(
        whole=summary(whole) if whole else None,
        by_reason={r: summary(v) for r, v in by_reason.items()},
        by_status={n: summary(v) for n, v in by_status.items()},
        sla_breaches=breaches,
        versions=frozenset(versions),
    )


def fold(timelines: Iterable[Timeline], slas: Slas) -> list[DailyRow]:
    """The daily aggregates of these instances (to be added to the stored ones), in key order.

    Kept lean (plain tuples and lists): the purger runs it for every batch, beside the worker's work.
    """
    samples: dict[tuple[str, int, date, FinishReason, str], list[float]] = {}
    breaches: dict[tuple[str, int, date, FinishReason, str], int] = {}
    for t in timelines:
        head = (t.object_name, t.model_version, t.day, t.finish_reason)
        whole = (*head, INSTANCE)
        samples.setdefault(whole, []).append(t.duration)
        if breached(t, slas):
            breaches[whole] = breaches.get(whole, 0) + 1
        for name, seconds in t.status_durations():
            samples.setdefault((*head, name), []).append(seconds)
    return [
        DailyRow(
            DailyKey(*key),
            len(values),
            math.fsum(values),
            min(values),
            max(values),
            tuple(histogram(values)),
            breaches.get(key, 0),
        )
        for key, values in sorted(samples.items())
    ]


def build_report(
    object_name: str,
    since: date | None,
    until: date | None,
    daily: Iterable[DailyRow],
    live: LiveFigures | Iterable[Timeline],
    slas: Slas,
    status_order: Sequence[str] = (),
    sla: float | None = None,
) -> ReportData:
    """The report over purged days (`daily`) and instances still kept (`live`: added up by the
    database, or timelines, added up here).

    Percentiles are exact as long as no daily aggregate is involved in a figure. `status_order`
    (the latest model's statuses) orders the status rows; statuses of other versions follow, by name.
    """
    if not isinstance(live, LiveFigures):
        live = summarize(live, slas)
    whole = Distribution()
    by_reason: dict[FinishReason, Distribution] = {}
    by_status: dict[str, Distribution] = {}
    breaches = 0
    purged = 0
    for row in daily:
        key = row.key
        if key.status_name == INSTANCE:
            targets = [whole, by_reason.setdefault(key.finish_reason, Distribution())]
            breaches += row.sla_breaches
            purged += row.count
        else:
            targets = [by_status.setdefault(key.status_name, Distribution())]
        for d in targets:
            d.merge_histogram(row.count, row.total, row.low, row.high, row.buckets)
    if live.whole is not None:
        whole.merge_summary(live.whole)
    for reason, figures in live.by_reason.items():
        by_reason.setdefault(reason, Distribution()).merge_summary(figures)
    for name, figures in live.by_status.items():
        by_status.setdefault(name, Distribution()).merge_summary(figures)
    breaches += live.sla_breaches
    order = {name: i for i, name in enumerate(status_order)}
    statuses = sorted(by_status, key=lambda n: (order.get(n, len(order)), n))
    reasons = [r for r in FinishReason if r in by_reason]
    has_sla = any(v is not None for k, v in slas.items() if k[0] == object_name) or sla is not None
    return ReportData(
        object_name=object_name,
        since=since,
        until=until,
        instances=whole.count,
        purged=purged,
        duration=whole.figures(),
        by_reason=[ReasonFigures(finish_reason=r, **by_reason[r]._figures()) for r in reasons],
        statuses=[StatusFigures(status_name=n, **by_status[n]._figures()) for n in statuses],
        sla=sla,
        sla_breaches=breaches if has_sla else None,
        percentile_error=round(RELATIVE_ERROR, 4),
    )


# --- for people: the table of `statusek report` ---------------------------------------------------


def seconds_text(value: float | None) -> str:
    """A duration for a table: ms below a second, then s, min, h, d."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.0095 else f"{value * 1000:.1f} ms"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.2f} s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


def _approx(f: DurationFigures, value: float | None) -> str:
    text = seconds_text(value)
    return text if f.exact or value is None else f"~{text}"


def format_report(report: ReportData) -> str:
    """The report as text: a summary, durations by finish reason, durations per status."""
    span = f"{report.since or 'the start'} to {report.until or 'today'} (days of finish, UTC)"
    lines = [
        f"object     {report.object_name}",
        f"finished   {span}",
        f"instances  {report.instances} ({report.purged} purged, counted from daily aggregates)",
    ]
    if report.sla is not None or report.sla_breaches is not None:
        sla = seconds_text(report.sla) if report.sla is not None else "none in the latest version"
        lines.append(f"sla        {sla}; {report.sla_breaches or 0} instance(s) took longer")
    header = ["", "COUNT", "P50", "P95", "MAX", "MEAN"]

    def row(name: str, f: DurationFigures) -> list[str]:
        return [
            name,
            str(f.count),
            _approx(f, f.p50),
            _approx(f, f.p95),
            seconds_text(f.max),
            seconds_text(f.mean),
        ]

    reasons = [row(f.finish_reason.value, f) for f in report.by_reason]
    lines += ["", "create -> finish", table(["REASON", *header[1:]], [*reasons, row("all", report.duration)])]
    if report.statuses:
        statuses = [row(f.status_name, f) for f in report.statuses]
        lines += ["", "previous status (or create) -> status", table(["STATUS", *header[1:]], statuses)]
    every = [report.duration, *report.by_reason, *report.statuses]
    if not all(f.exact for f in every):
        lines += [
            "",
            f"~ estimated from the histograms of purged days: within {report.percentile_error:.1%}"
            " of the exact value",
        ]
    return "\n".join(lines)


def report_reply(
    query: ReportQuery,
    latest: StatusModel | None,
    daily: Iterable[DailyRow],
    live: LiveFigures | Iterable[Timeline],
    slas: Slas,
) -> Reply:
    """The reply to `get-report`; `latest` is the object's latest model version (None: no such object)."""
    if latest is None:
        return Reply.fail(Code.OBJECT_NAME_IS_NOT_FOUND, f"Object {query.object_name!r} is not found")
    report = build_report(
        query.object_name,
        query.since,
        query.until,
        daily,
        live,
        slas,
        [s.name for s in latest.statuses],
        latest.sla,
    )
    return Reply.ok(f"Report of {report.instances} instance(s) of object {query.object_name!r}", report)
