"""Model validation: every error names the file, the model and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from statusek.adapters.model_files import load_models
from statusek.core.model import ModelError, StatusType, check_model, closest_name, parse_model

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "statusek" / "models"


def model(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "object_name": "M",
        "statuses": [{"name": "A", "type": "MANDATORY"}, {"name": "B", "type": "MANDATORY", "after": ["A"]}],
    }
    raw.update(overrides)
    return raw


def error(raw: object) -> ModelError:
    with pytest.raises(ModelError) as caught:
        parse_model(raw, source="m.yaml")
    return caught.value


def test_valid_model_parses() -> None:
    """A well-formed definition becomes a model with its edges."""
    m = parse_model(model(instance_timeout=600))
    assert m.mandatory == ("A", "B")
    assert m.next_of("A") == ("B",)
    assert m.status("B") is not None and m.status("B").type is StatusType.MANDATORY  # type: ignore[union-attr]


def test_duplicate_status_names_are_an_error() -> None:
    """Duplicate names are reported with their position."""
    e = error(model(statuses=[{"name": "A", "type": "MANDATORY"}, {"name": "A", "type": "OPTIONAL"}]))
    assert (e.source, e.object_name, e.field_path) == ("m.yaml", "M", "statuses[1].name")
    assert "duplicate" in str(e)


def test_after_naming_unknown_status_is_an_error() -> None:
    """`after` must name statuses of the model."""
    e = error(model(statuses=[{"name": "A", "type": "MANDATORY", "after": ["Z"]}]))
    assert e.field_path == "statuses[0].after" and "'Z'" in str(e)


def test_cycles_are_an_error() -> None:
    """A cycle is reported with its path."""
    e = error(
        model(
            statuses=[
                {"name": "A", "type": "MANDATORY", "after": ["C"]},
                {"name": "B", "type": "MANDATORY", "after": ["A"]},
                {"name": "C", "type": "MANDATORY", "after": ["B"]},
            ]
        )
    )
    assert "cycle" in str(e) and "A -> B -> C -> A" in str(e)


def test_self_edge_is_an_error() -> None:
    """A status cannot follow itself."""
    assert "itself" in str(error(model(statuses=[{"name": "A", "type": "MANDATORY", "after": ["A"]}])))


def test_unknown_type_is_an_error() -> None:
    """Only MANDATORY, OPTIONAL and STOP-STATUS exist."""
    e = error(model(statuses=[{"name": "A", "type": "SOMETIMES"}]))
    assert e.field_path == "statuses[0].type" and "SOMETIMES" in str(e)


def test_empty_status_list_is_an_error() -> None:
    """A model needs at least one status."""
    assert error(model(statuses=[])).field_path == "statuses"


@pytest.mark.parametrize("field", ["instance_timeout", "heartbeat_timeout"])
@pytest.mark.parametrize("value", [0, -5, "soon", True])
def test_non_positive_or_non_numeric_timeouts_are_errors(field: str, value: object) -> None:
    """Timeouts are positive numbers of seconds."""
    assert error(model(**{field: value})).field_path == field


def test_unknown_field_is_an_error() -> None:
    """Typos in field names are caught, not ignored."""
    assert error(model(statusses=[])).field_path == "statusses"


def test_missing_object_name_is_an_error() -> None:
    """object_name is required."""
    raw = model()
    del raw["object_name"]
    assert error(raw).field_path == "object_name"


def test_identical_definitions_have_the_same_digest() -> None:
    """Reloading an unchanged file must not create a version."""
    assert parse_model(model()).digest() == parse_model(model()).digest()
    assert parse_model(model()).digest() != parse_model(model(description="changed")).digest()


def test_shipped_models_are_valid() -> None:
    """The models that ship with statusek load without errors."""
    models, errors = load_models([SHIPPED])
    assert errors == []
    names = {m.object_name for m in models}
    assert "2-POINT LINE TASK" in names
    types = {s.type for m in models for s in m.statuses}
    assert {StatusType.OPTIONAL, StatusType.STOP_STATUS} <= types


def test_same_object_name_in_two_files_is_an_error(tmp_path: Path) -> None:
    """Two files cannot define the same object."""
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("object_name: X\nstatuses: [{name: A, type: MANDATORY}]\n")
    _, errors = load_models([tmp_path])
    assert len(errors) == 1 and "already defined" in str(errors[0])


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    """A YAML syntax error names the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("object_name: [unclosed\n")
    _, errors = load_models([bad])
    assert str(bad) in str(errors[0]) and "YAML" in str(errors[0])


def test_every_problem_of_a_model_is_reported() -> None:
    """check_model reports each problem of a model, not only the first."""
    raw = model(
        instance_timeout=-1,
        colour="red",
        statuses=[
            {"name": "A", "type": "MANDATRY"},
            {"name": "B", "type": "MANDATORY", "after": ["Z"]},
            {"name": "B", "type": "OPTIONAL"},
        ],
    )
    built, problems = check_model(raw, source="m.yaml")
    assert built is None
    assert [p.field_path for p in problems] == [
        "colour",
        "instance_timeout",
        "statuses[0].type",
        "statuses[2].name",
        "statuses[1].after",
    ]


def test_a_cycle_is_reported_with_the_other_problems() -> None:
    """A cycle among valid edges is reported next to a problem elsewhere."""
    raw = model(
        statuses=[
            {"name": "A", "type": "MANDATORY", "after": ["B"]},
            {"name": "B", "type": "MANDATORY", "after": ["A"]},
            {"name": "C", "type": "MANDATORY", "colour": "red"},
        ]
    )
    _, problems = check_model(raw)
    assert [p.field_path for p in problems] == ["statuses[2].colour", "statuses"]
    assert "cycle" in problems[1].problem


def test_a_follower_of_a_broken_status_is_not_reported_too() -> None:
    """`after` naming a status whose own definition is wrong is not a second problem."""
    raw = model(statuses=[{"name": "A", "type": "WRONG"}, {"name": "B", "type": "MANDATORY", "after": ["A"]}])
    _, problems = check_model(raw)
    assert [p.field_path for p in problems] == ["statuses[0].type"]


def test_every_problem_of_a_file_is_loaded(tmp_path: Path) -> None:
    """load_models returns each problem of a file with two mistakes."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("object_name: X\nstatuses:\n  - {name: A, type: MANDATRY}\n  - {name: B, after: [Z]}\n")
    models, errors = load_models([bad])
    assert models == []
    assert [e.field_path for e in errors] == ["statuses[0].type", "statuses[1].type", "statuses[1].after"]


@pytest.mark.parametrize(
    ("asked", "expected"),
    [("started", "STARTED"), ("STRATED", "STARTED"), ("2-point line task", "2-POINT LINE TASK"), ("X", None)],
)
def test_closest_name_finds_case_and_typos(asked: str, expected: str | None) -> None:
    """closest_name suggests the intended name: other case, or a near spelling."""
    assert closest_name(asked, ["STARTED", "FINISHED", "2-POINT LINE TASK"]) == expected
