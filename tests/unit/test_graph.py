"""Mermaid and DOT drawings of models and instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from statusek import graph
from statusek.adapters.model_files import load_models

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "statusek" / "models"
MODELS = {m.object_name: m for m in load_models([SHIPPED])[0]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mermaid_draws_every_status_and_edge(name: str) -> None:
    """Every status is a node with its type's class; every edge is an arrow."""
    model = MODELS[name]
    text = graph.mermaid(model)
    assert text.startswith("flowchart LR\n")
    for s in model.statuses:
        assert f"{s.name}<br/>({s.type.value})" in text
    edges = sum(len(s.after) for s in model.statuses)
    assert text.count(" --> ") == edges


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dot_draws_every_status_and_edge(name: str) -> None:
    """DOT output has a node per status and an edge per `after` entry."""
    model = MODELS[name]
    text = graph.dot(model)
    assert text.startswith(f'digraph "{name}" {{')
    assert text.count(" -> ") == sum(len(s.after) for s in model.statuses)
    assert text.rstrip().endswith("}")


def test_set_statuses_are_marked() -> None:
    """An instance's set statuses carry a tick and the `set` class / thick border."""
    model = MODELS["2-POINT LINE TASK"]
    text = graph.mermaid(model, ["STARTED"])
    assert "STARTED ✔" in text and "class s0 set" in text and "FINISHED ✔" not in text
    assert 'label="STARTED ✔\\n(MANDATORY)", fillcolor="#cfe2ff", color="#0b5ed7", penwidth=4' in graph.dot(
        model, ["STARTED"]
    )


def test_types_have_distinct_colours() -> None:
    """MANDATORY, OPTIONAL and STOP-STATUS are told apart by colour."""
    text = graph.mermaid(MODELS["DOCUMENT REVIEW"])
    assert ":::mandatory" in text and ":::optional" in text and ":::stop" in text
