"""The model fields `retention` and `sla`, and the durations they are written in."""

from __future__ import annotations

import pytest

from statusek.core.model import ModelError, check_model, optional_duration, parse_duration, parse_model


def model(**fields: object) -> dict[str, object]:
    return {"object_name": "M", "statuses": [{"name": "A", "type": "MANDATORY"}], **fields}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600.0),
        (3600, 3600.0),
        (0.5, 0.5),
        ("90s", 90.0),
        ("90m", 5400.0),
        ("12h", 43200.0),
        ("30d", 2592000.0),
        ("2w", 1209600.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations_are_seconds_or_a_number_with_a_unit(text: object, seconds: float) -> None:
    """`3600`, `90m`, `12h`, `30d`, `2w` read as seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "30 days", "d", "", True, None, "nan", float("inf")])
def test_a_duration_must_be_positive_and_readable(text: object) -> None:
    """Zero, negatives, unknown units and non-numbers are refused."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_an_empty_setting_means_no_retention() -> None:
    """STATUSEK_DEFAULT_RETENTION unset or empty keeps instances forever."""
    assert (optional_duration(None), optional_duration(" "), optional_duration("1d")) == (None, None, 86400.0)


def test_retention_and_sla_are_part_of_the_definition() -> None:
    """Both are parsed to seconds, kept in the definition, and change the digest."""
    plain = parse_model(model())
    timed = parse_model(model(retention="30d", sla=120))
    assert (timed.retention, timed.sla) == (2592000.0, 120.0)
    assert timed.definition()["retention"] == 2592000.0 and timed.definition()["sla"] == 120.0
    assert "retention" not in plain.definition() and plain.digest() != timed.digest()
    assert parse_model(timed.definition()) == timed


def test_bad_retention_names_the_field() -> None:
    """A retention that is no duration is a model error naming the file, model and field."""
    _, problems = check_model(model(retention="forever", sla=-1), source="m.yaml")
    assert [p.field_path for p in problems] == ["retention", "sla"]
    assert all(isinstance(p, ModelError) and p.source == "m.yaml" for p in problems)
    assert "'forever' is not a duration" in str(problems[0])
