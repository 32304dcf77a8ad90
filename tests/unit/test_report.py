"""Timing reports and daily aggregates (core/report.py) on scripted timelines with known durations."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import pytest
from pydantic import ValidationError

from statusek.core.codes import Code, FinishReason
from statusek.core.instance import Event, EventKind
from statusek.core.messages import MAX_REPORT_DAYS, InstanceQuery, PingSummary, ReportQuery
from statusek.core.model import parse_model
from statusek.core.report import (
    INSTANCE,
    LOWEST,
    RELATIVE_ERROR,
    DailyKey,
    Distribution,
    Timeline,
    bucket_bounds,
    bucket_of,
    build_report,
    fold,
    format_report,
    histogram,
    report_reply,
    summary,
    timeline,
)
from statusek.core.views import answer

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
DONE = FinishReason.ALL_MANDATORY_STATUSES_ARE_SET
TASK = parse_model(
    {
        "object_name": "TASK",
        "sla": 60,
        "statuses": [
            {"name": "STARTED", "type": "MANDATORY"},
            {"name": "FINISHED", "type": "MANDATORY", "after": ["STARTED"]},
        ],
    },
    version=1,
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def line(started: float, finished: float, *, begin: float = 0, version: int = 1) -> Timeline:
    """A TASK instance created at `begin` s, STARTED and FINISHED at those seconds after T0."""
    return Timeline(
        "TASK",
        version,
        at(begin),
        at(finished),
        DONE,
        (("STARTED", at(started)), ("FINISHED", at(finished))),
    )


def test_status_duration_runs_from_the_previous_status_or_the_creation() -> None:
    """STARTED counts from the creation, FINISHED from STARTED; pings and the finish are not statuses."""
    token = uuid4()
    events = [
        Event(token, 1, EventKind.CREATED, at(0)),
        Event(token, 2, EventKind.PING, at(1)),
        Event(token, 3, EventKind.STATUS, at(2), status_name="STARTED"),
        Event(token, 4, EventKind.PING, at(4)),
        Event(token, 5, EventKind.STATUS, at(7), status_name="FINISHED"),
        Event(token, 6, EventKind.FINISHED, at(7), reason=DONE),
    ]
    t = timeline("TASK", 1, events)
    assert t.duration == 7
    assert t.status_durations() == [("STARTED", 2.0), ("FINISHED", 5.0)]


def test_exact_percentiles_are_nearest_rank() -> None:
    """Of the durations 1..100 s, p50 is 50 s and p95 is 95 s, exactly."""
    d = Distribution()
    for seconds in random.Random(1).sample(range(1, 101), 100):
        d.add(float(seconds))
    assert (d.percentile(50), d.percentile(95), d.high, d.exact) == (50.0, 95.0, 100.0, True)


def test_percentile_of_one_duration_is_that_duration() -> None:
    """A single duration is its own p50 and p95."""
    d = Distribution()
    d.add(3.25)
    assert (d.percentile(50), d.percentile(95)) == (3.25, 3.25)


def test_every_duration_lies_in_its_bucket() -> None:
    """bucket_of and bucket_bounds agree, from under a millisecond to ten years."""
    for seconds in [0.0, 0.0004, LOWEST, 0.0123, 1.0, 59.9, 3600.0, 86400.0 * 365 * 10]:
        low, high = bucket_bounds(bucket_of(seconds))
        assert low <= seconds < high


def test_histogram_percentile_is_within_the_stated_error() -> None:
    """Estimated from buckets, p50 and p95 stay within RELATIVE_ERROR of the exact values."""
    rng = random.Random(7)
    for _ in range(200):
        samples = [rng.lognormvariate(2, 2) for _ in range(rng.randint(1, 300))]
        exact = Distribution()
        for s in samples:
            exact.add(s)
        estimated = Distribution()
        estimated.merge_histogram(exact.count, exact.total, exact.low or 0, exact.high or 0, exact.buckets)
        assert not estimated.exact
        for p in (50, 95):
            truth, guess = exact.percentile(p), estimated.percentile(p)
            assert truth is not None and guess is not None
            if truth >= LOWEST:
                assert abs(guess / truth - 1) <= RELATIVE_ERROR + 1e-9
            else:
                assert abs(guess - truth) <= LOWEST / 2


def test_fold_keys_aggregates_by_day_of_finish_reason_and_status() -> None:
    """fold gives a create-to-finish row and a row per status, per finish day (UTC) and reason."""
    late = Timeline("TASK", 1, at(0), at(14 * 3600 + 5), FinishReason.TIMEOUT)  # finishes 2026-03-02 00:00:05
    rows = fold([line(2, 7), line(1, 3), late], {("TASK", 1): 60})
    by_key = {(r.key.day, r.key.finish_reason, r.key.status_name): r for r in rows}
    assert set(by_key) == {
        (date(2026, 3, 1), DONE, INSTANCE),
        (date(2026, 3, 1), DONE, "STARTED"),
        (date(2026, 3, 1), DONE, "FINISHED"),
        (date(2026, 3, 2), FinishReason.TIMEOUT, INSTANCE),
    }
    whole = by_key[(date(2026, 3, 1), DONE, INSTANCE)]
    assert (whole.count, whole.total, whole.low, whole.high, whole.sla_breaches) == (2, 10.0, 3.0, 7.0, 0)
    assert sum(whole.buckets) == 2
    assert by_key[(date(2026, 3, 2), FinishReason.TIMEOUT, INSTANCE)].sla_breaches == 1


def test_report_of_kept_instances_is_exact() -> None:
    """Counts, p50, p95, max, mean per reason and per status come out exactly from live timelines."""
    live = [line(1, 3), line(2, 7), line(4, 12), line(1, 90)]
    report = build_report("TASK", None, None, [], live, {("TASK", 1): 60}, ["STARTED", "FINISHED"], 60)
    assert (report.instances, report.purged, report.sla_breaches) == (4, 0, 1)
    assert report.duration.model_dump() == {
        "count": 4,
        "p50": 7.0,
        "p95": 90.0,
        "max": 90.0,
        "mean": 28.0,
        "exact": True,
    }
    started, finished = report.statuses
    assert (started.status_name, started.p50, started.p95, started.max) == ("STARTED", 1.0, 4.0, 4.0)
    assert (finished.status_name, finished.p50, finished.p95, finished.max) == ("FINISHED", 5.0, 89.0, 89.0)
    assert [(r.finish_reason, r.count) for r in report.by_reason] == [(DONE, 4)]


def test_purged_and_kept_instances_add_up() -> None:
    """Folded days plus live timelines: counts, max, mean, breaches exact; percentiles estimated."""
    purged = [line(1, 3), line(2, 7)]
    live = [line(4, 12), line(1, 90)]
    slas = {("TASK", 1): 60.0}
    combined = build_report("TASK", None, None, fold(purged, slas), live, slas, ["STARTED", "FINISHED"], 60)
    exact = build_report("TASK", None, None, [], purged + live, slas, ["STARTED", "FINISHED"], 60)
    assert (combined.instances, combined.purged, combined.sla_breaches) == (4, 2, 1)
    assert (combined.duration.max, combined.duration.mean) == (exact.duration.max, exact.duration.mean)
    assert not combined.duration.exact
    for got, want in [
        (combined.duration, exact.duration),
        *zip(combined.statuses, exact.statuses, strict=True),
    ]:
        assert got.count == want.count
        for p in ("p50", "p95"):
            assert math.isclose(getattr(got, p), getattr(want, p), rel_tol=RELATIVE_ERROR)


def test_statuses_follow_the_model_then_other_versions_by_name() -> None:
    """Status rows come in the latest model's order; statuses only older versions had come after."""
    old = Timeline(
        "TASK", 1, at(0), at(5), DONE, (("QUEUED", at(1)), ("STARTED", at(2)), ("FINISHED", at(5)))
    )
    report = build_report("TASK", None, None, [], [old], {}, ["STARTED", "FINISHED"])
    assert [s.status_name for s in report.statuses] == ["STARTED", "FINISHED", "QUEUED"]
    assert report.sla_breaches is None


def test_breaches_use_the_sla_of_each_instances_version() -> None:
    """An instance is judged by the SLA of its own model version."""
    live = [line(1, 30, version=1), line(1, 30, version=2)]
    report = build_report("TASK", None, None, [], live, {("TASK", 1): 10.0, ("TASK", 2): None}, [], None)
    assert report.sla_breaches == 1


def test_table_marks_estimates_only() -> None:
    """The table shows every reason and status; a ~ marks estimated percentiles and the error is said."""
    slas = {("TASK", 1): 60.0}
    exact = format_report(build_report("TASK", None, None, [], [line(1, 3)], slas, ["STARTED"], 60))
    assert "ALL_MANDATORY_STATUSES_ARE_SET" in exact and "STARTED" in exact and "~" not in exact
    assert "1 instance(s) took longer" not in exact and "0 instance(s) took longer" in exact
    mixed = build_report("TASK", date(2026, 3, 1), None, fold([line(1, 3)], slas), [line(2, 7)], slas, [], 60)
    text = format_report(mixed)
    assert "~" in text and f"{RELATIVE_ERROR:.1%}" in text and "2026-03-01" in text


def test_report_of_unknown_object_is_refused() -> None:
    """get-report of an object with no model answers OBJECT_NAME_IS_NOT_FOUND."""
    reply = report_reply(ReportQuery(object_name="NOPE"), None, [], [], {})
    assert (reply.status, reply.code) == (False, Code.OBJECT_NAME_IS_NOT_FOUND)


def test_report_query_refuses_since_after_until() -> None:
    """A range that ends before it starts is a schema violation."""
    with pytest.raises(ValidationError, match="since is after until"):
        ReportQuery(object_name="TASK", since=date(2026, 3, 2), until=date(2026, 3, 1))


def test_report_query_refuses_a_range_of_more_than_max_report_days() -> None:
    """since..until may span MAX_REPORT_DAYS days (both included), not one more; the error names until."""
    since = date(2024, 1, 1)
    ReportQuery(object_name="TASK", since=since, until=since + timedelta(days=MAX_REPORT_DAYS - 1))
    with pytest.raises(ValidationError, match=r"until: since\.\.until spans 367 days"):
        ReportQuery(object_name="TASK", since=since, until=since + timedelta(days=MAX_REPORT_DAYS))


def test_a_summary_alone_gives_its_exact_percentiles() -> None:
    """Durations added up by the database are exact while nothing else is in the distribution."""
    values = [0.5, 3.0, 1.25, 8.0, 2.0]
    d = Distribution()
    d.merge_summary(summary(values, buckets=False))
    plain = Distribution()
    for v in values:
        plain.add(v)
    assert d.figures() == plain.figures()
    assert d.exact


def test_a_summary_beside_daily_aggregates_estimates_as_its_durations_would() -> None:
    """A summary merged after a daily aggregate gives the same estimates as its durations one by one."""
    rng = random.Random(7)
    purged = [rng.lognormvariate(2, 1) for _ in range(50)]
    kept = [rng.lognormvariate(2.5, 1) for _ in range(70)]
    merged, one_by_one = Distribution(), Distribution()
    for d in (merged, one_by_one):
        d.merge_histogram(len(purged), math.fsum(purged), min(purged), max(purged), histogram(purged))
    merged.merge_summary(summary(kept))
    for v in kept:
        one_by_one.add(v)
    got, want = merged.figures(), one_by_one.figures()
    assert (got.count, got.p50, got.p95, got.max) == (want.count, want.p50, want.p95, want.max)
    assert not got.exact
    assert got.mean is not None and want.mean is not None and math.isclose(got.mean, want.mean)


def test_a_summary_without_its_histogram_cannot_join_daily_aggregates() -> None:
    """Merging a summary with no buckets into estimates is refused, not silently wrong."""
    d = Distribution()
    d.merge_histogram(2, 3.0, 1.0, 2.0, histogram([1.0, 2.0]))
    with pytest.raises(ValueError, match="histogram"):
        d.merge_summary(summary([5.0], buckets=False))


def test_daily_keys_sort_by_object_version_and_day() -> None:
    """Aggregates are written in key order (a stable lock order for concurrent upserts)."""
    rows = fold([line(1, 3, version=2), line(1, 3, version=1)], {})
    assert [r.key for r in rows] == sorted(r.key for r in rows)
    assert isinstance(rows[0].key, DailyKey) and rows[0].key.model_version == 1


def test_get_instance_carries_the_ping_summary() -> None:
    """get-instance shows the ping summary it is given, per sender."""
    from statusek.core.decide import decide
    from statusek.core.messages import Create

    d = decide(Create(object_name="TASK"), None, {"TASK": TASK}, T0, new_token=uuid4())
    assert d.state is not None
    pings = [PingSummary(sender="alice", count=3, first_at=at(1), last_at=at(9), last_message="page 3")]
    reply = answer(
        "get-instance", InstanceQuery(instance_token=d.state.token), d.state, TASK, [], T0, pings=pings
    )
    assert reply.data["pings"] == [
        {
            "sender": "alice",
            "count": 3,
            "first_at": "2026-03-01T10:00:01Z",
            "last_at": "2026-03-01T10:00:09Z",
            "last_message": "page 3",
        }
    ]
