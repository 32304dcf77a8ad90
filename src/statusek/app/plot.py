"""`statusek report --plot FILE`: the durations of a report as a bar chart (matplotlib, Agg backend).

matplotlib is an optional dependency of the CLI (`pip install 'statusek[plot]'`), imported only here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from statusek.core.messages import DurationFigures, ReportData
from statusek.core.report import seconds_text

WHOLE = "create → finish"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_report(report: ReportData, path: Path) -> None:
    """p50, p95 and max of create-to-finish and of every status, one group of bars each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows: list[tuple[str, DurationFigures]] = [
        (WHOLE, report.duration),
        *((s.status_name, s) for s in report.statuses),
    ]
    rows = [(name, f) for name, f in rows if f.count]
    figure = Figure(figsize=(9, 1.6 + 0.7 * max(1, len(rows))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    height = 0.26
    series = (("p50", "#0b5ed7"), ("p95", "#fd7e14"), ("max", "#dc3545"))
    for i, (label, colour) in enumerate(series):
        values = [getattr(f, label) or 0.0 for _, f in rows]
        positions = [row + (i - 1) * height for row in range(len(rows))]
        bars = axes.barh(positions, values, height=height, color=colour, label=label)
        texts = [
            ("" if f.exact or label == "max" else "~") + seconds_text(getattr(f, label)) for _, f in rows
        ]
        axes.bar_label(bars, labels=texts, padding=3, fontsize=8)
    axes.set_yticks(range(len(rows)), [f"{name} (n={f.count})" for name, f in rows])
    axes.invert_yaxis()
    values = [v for _, f in rows for v in (f.p50, f.max) if v]
    if values and max(values) / min(values) > 50:
        axes.set_xscale("log")
    axes.set_xlabel("seconds (status: since the previous status, or the creation)")
    span = f"{report.since or 'start'} to {report.until or 'today'}"
    estimated = "" if all(f.exact for _, f in rows) else f"; ~ estimated within {report.percentile_error:.1%}"
    axes.set_title(f"{report.object_name}: {report.instances} instance(s) finished, {span}{estimated}")
    axes.legend(loc="lower right")
    axes.margins(x=0.15)
    figure.savefig(path, dpi=100)
