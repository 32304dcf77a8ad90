"""`statusek report --plot FILE`: the durations of a report as a bar chart (matplotlib, Agg backend).

matplotlib is an optional dependency of the CLI (`pip install 'statusek[plot]'`), imported only here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from statusek.core.messages import DurationFigures, ReportData
from statusek.core.report import seconds_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes

WHOLE = "create → finish"
_Row = tuple[str, DurationFigures]
_SERIES = (("p50", "#0b5ed7"), ("p95", "#fd7e14"), ("max", "#dc3545"))
_BAR_HEIGHT = 0.26


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_report(report: ReportData, path: Path) -> None:
    """p50, p95 and max of create-to-finish and of every status, one group of bars each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _rows(report)
    figure = Figure(figsize=(9, 1.6 + 0.7 * max(1, len(rows))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    _draw_bars(axes, rows)
    axes.set_yticks(range(len(rows)), [f"{name} (n={f.count})" for name, f in rows])
    axes.invert_yaxis()
    if _spans_orders_of_magnitude(rows):
        axes.set_xscale("log")
    axes.set_xlabel("seconds (status: since the previous status, or the creation)")
    axes.set_title(_title(report, rows))
    axes.legend(loc="lower right")
    axes.margins(x=0.15)
    figure.savefig(path, dpi=100)


def _rows(report: ReportData) -> list[_Row]:
    """Create-to-finish, then each status, leaving out those with no duration."""
    rows: list[_Row] = [(WHOLE, report.duration), *((s.status_name, s) for s in report.statuses)]
    return [(name, f) for name, f in rows if f.count]


def _draw_bars(axes: Axes, rows: list[_Row]) -> None:
    """One bar per series and row, labelled with its value."""
    for i, (label, colour) in enumerate(_SERIES):
        values = [getattr(f, label) or 0.0 for _, f in rows]
        positions = [row + (i - 1) * _BAR_HEIGHT for row in range(len(rows))]
        bars = axes.barh(positions, values, height=_BAR_HEIGHT, color=colour, label=label)
        axes.bar_label(bars, labels=_bar_texts(rows, label), padding=3, fontsize=8)


def _bar_texts(rows: list[_Row], label: str) -> list[str]:
    """The values of one series, `~` before the estimated percentiles (a max is always exact)."""
    return [("" if f.exact or label == "max" else "~") + seconds_text(getattr(f, label)) for _, f in rows]


def _spans_orders_of_magnitude(rows: list[_Row]) -> bool:
    """Whether the bars differ so much (over 50 times) that a linear axis would hide the short ones."""
    values = [v for _, f in rows for v in (f.p50, f.max) if v]
    return bool(values) and max(values) / min(values) > 50


def _title(report: ReportData, rows: list[_Row]) -> str:
    """The object, how many instances over which days, and whether any figure is estimated."""
    span = f"{report.since or 'start'} to {report.until or 'today'}"
    estimated = "" if all(f.exact for _, f in rows) else f"; ~ estimated within {report.percentile_error:.1%}"
    return f"{report.object_name}: {report.instances} instance(s) finished, {span}{estimated}"
