"""deploy/prometheus/alerts.yaml and deploy/grafana/statusek.json: well-formed, and only about metrics
the worker exports.

With promtool (Debian's `prometheus` package) the rules are checked and unit-tested by Prometheus's
own engine (deploy/prometheus/alerts.test.yaml), and the dashboard's queries are parsed by it too.
Without promtool those tests skip, or fail when STATUSEK_REQUIRE_PROMTOOL=1 (CI); the structural
checks below run either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from statusek.worker.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "statusek.json"

# The worker's metrics (counters with their _total suffix, histograms by their base name),
# from the code, so that alerts and dashboard cannot drift from it.
DOCUMENTED_METRICS = METRIC_NAMES
HISTOGRAMS = frozenset(
    {"statusek_command_duration_seconds", "statusek_window_size", "statusek_window_stage_seconds"}
)
# Series a query may name: histograms only through their _bucket/_sum/_count series.
SERIES = (DOCUMENTED_METRICS - HISTOGRAMS) | {
    f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
# Prometheus's own series, about the scrape rather than the worker.
STANDARD_SERIES = frozenset({"up"})

SEVERITIES = frozenset({"critical", "warning", "info"})
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"})
_KEYWORDS |= {"bool", "offset", "inf", "nan"}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules()]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels() -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (a lexical pass, enough for our own queries)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and function arguments
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, before = match.group(), expr[: match.start()]
        if word.lower() in _KEYWORDS or before[-1:] in ("$", ".") or before[-1:].isdigit():
            continue  # a keyword, a Grafana variable, or the exponent or unit of a number
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        names.add(word)
    return names


def histogram_of(series: str) -> str | None:
    """The histogram a _bucket, _sum or _count series belongs to, if any."""
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    return base if base in HISTOGRAMS else None


def balanced(expr: str) -> bool:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in expr:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def promtool() -> str:
    """The promtool binary; skips without it unless STATUSEK_REQUIRE_PROMTOOL=1."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("STATUSEK_REQUIRE_PROMTOOL") == "1":
            pytest.fail(
                "STATUSEK_REQUIRE_PROMTOOL=1 but promtool is not installed (apt-get install prometheus)"
            )
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


# --- the rules, by promtool ---------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts alerts.yaml."""
    result = run_promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    """`promtool test rules` passes: every alert fires on its scenario and stays quiet on its near miss."""
    result = run_promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", alert_names())
def test_unit_tests_notice_an_alert_that_never_fires(alert: str, tmp_path: Path) -> None:
    """With the alert's expression made never true, alerts.test.yaml fails: the alert is really tested."""
    promtool()
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(0) > 1"
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(document), encoding="utf-8")
    # Only the scenarios about this alert, to keep promtool quick.
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    tests["tests"] = [
        test for test in tests["tests"] if any(c["alertname"] == alert for c in test["alert_rule_test"])
    ]
    (tmp_path / ALERT_TESTS.name).write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = run_promtool("test", "rules", tmp_path / ALERT_TESTS.name)
    assert result.returncode != 0, f"alerts.test.yaml still passes without {alert}"


# --- the rules, structurally (also without promtool) --------------------------------------------


def test_every_rule_is_an_alert_with_a_unique_name() -> None:
    """Every rule is an alert (no recording rules) and no two alerts share a name."""
    names = alert_names()
    assert len(names) == len(rules())
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", "?"))
def test_rule_has_the_required_fields(rule: dict[str, Any]) -> None:
    """expr, for, a known severity, and summary, description and runbook annotations."""
    assert rule["expr"].strip()
    assert rule["labels"]["severity"] in SEVERITIES
    assert {"summary", "description", "runbook"} <= rule["annotations"].keys()
    assert all(str(text).strip() for text in rule["annotations"].values())


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", "?"))
def test_rule_for_is_a_duration(rule: dict[str, Any]) -> None:
    """`for` is a Prometheus duration such as 2m or 1h30m."""
    assert DURATION.match(str(rule["for"])), rule["for"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", "?"))
def test_rule_expression_is_balanced(rule: dict[str, Any]) -> None:
    """Parentheses, brackets and braces of the expression pair up."""
    assert balanced(rule["expr"])


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", "?"))
def test_rule_expression_uses_documented_metrics(rule: dict[str, Any]) -> None:
    """The expression selects only documented statusek series, or `up`."""
    names = metric_names(rule["expr"])
    assert names, "no metric found"
    assert names <= SERIES | STANDARD_SERIES, names - SERIES - STANDARD_SERIES


def test_metric_names_finds_series_and_skips_the_rest() -> None:
    """The lexical metric finder keeps series names and drops functions, labels, keywords and numbers."""
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x="y(z)"}[5m]))) > 2.5e3'
        " and on (job) b offset 1h unless c[$__rate_interval]"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_every_alert_fires_in_a_unit_test() -> None:
    """alerts.test.yaml expects every alert to fire at least once."""
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert fired == set(alert_names())


# --- the dashboard ------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    """statusek.json is JSON with a title, a uid, a recent schemaVersion and panels."""
    data = dashboard()
    assert data["title"] and data["uid"] == "statusek"
    assert 36 <= data["schemaVersion"] <= 41
    assert panels()


def test_dashboard_panel_ids_are_unique() -> None:
    """No two panels share an id."""
    ids = [panel["id"] for panel in panels()]
    assert len(set(ids)) == len(ids)


def test_dashboard_panels_fit_the_grid() -> None:
    """Every panel lies within Grafana's 24 columns."""
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_use_the_datasource_variable() -> None:
    """Every query panel reads from the ${datasource} variable, defined as a Prometheus data source."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        if panel.get("targets"):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_queries_are_balanced() -> None:
    """Parentheses, brackets and braces of every dashboard query pair up."""
    for expr in dashboard_queries():
        assert balanced(expr), expr


def test_dashboard_queries_use_documented_metrics() -> None:
    """Every dashboard query selects only documented statusek series."""
    used = set().union(*(metric_names(expr) for expr in dashboard_queries()))
    assert used <= SERIES, used - SERIES


def test_dashboard_shows_every_documented_metric() -> None:
    """Every documented metric appears in at least one dashboard query."""
    used = set().union(*(metric_names(expr) for expr in dashboard_queries()))
    shown = {histogram_of(name) or name for name in used}
    assert shown >= DOCUMENTED_METRICS, DOCUMENTED_METRICS - shown


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables replaced by plain values)."""
    promtool()
    rules = [
        {
            "record": f"statusek:dashboard_query_{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*"),
        }
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
