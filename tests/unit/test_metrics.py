"""The metric names the ops docs, alerts and dashboard rely on are the ones the worker exports."""

from __future__ import annotations

from statusek.worker.metrics import METRIC_NAMES, Metrics


def test_metric_names_match_the_registry() -> None:
    """METRIC_NAMES lists every family the worker registers, counters with `_total`."""
    families = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    assert families == METRIC_NAMES


def test_dead_letter_series_exist_before_the_first_dead_letter() -> None:
    """Every dead-letter reason is exported at 0 from the start, so increase() sees the first one."""
    text = Metrics().render().decode()
    assert 'statusek_dead_lettered_total{reason="delivery-limit"} 0.0' in text
