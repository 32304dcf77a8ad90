"""Reading model definitions from YAML files and folders."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from statusek.core.access import Groups, parse_groups
from statusek.core.model import ModelError, StatusModel, check_model


def model_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def read_model_file(path: Path) -> tuple[StatusModel | None, list[ModelError]]:
    """The model of a file, or every problem found in it."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        return None, [ModelError(str(path), None, "<file>", f"cannot be read: {e.strerror}")]
    except yaml.YAMLError as e:
        return None, [ModelError(str(path), None, "<file>", f"is not valid YAML: {e}")]
    return check_model(raw, source=str(path))


def load_model_file(path: Path) -> StatusModel:
    """The model of a file, or its first problem raised."""
    model, problems = read_model_file(path)
    if problems:
        raise problems[0]
    assert model is not None
    return model


def load_models(paths: Iterable[Path]) -> tuple[list[StatusModel], list[ModelError]]:
    """Every model found, and every problem found; names must be unique across files."""
    models: list[StatusModel] = []
    errors: list[ModelError] = []
    seen: dict[str, Path] = {}
    for path in model_files(paths):
        model, problems = read_model_file(path)
        errors.extend(problems)
        if model is None:
            continue
        if model.object_name in seen:
            errors.append(
                ModelError(
                    str(path),
                    model.object_name,
                    "object_name",
                    f"already defined in {seen[model.object_name]}",
                )
            )
            continue
        seen[model.object_name] = path
        models.append(model)
    return models, errors


class GroupsError(ValueError):
    """The groups file is missing or invalid; the message names the file and the entry."""


def load_groups(path: str | None) -> Groups:
    """The groups that model writer lists may name; none without a file."""
    if not path:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise GroupsError(f"{path}: cannot be read: {e.strerror} (check STATUSEK_GROUPS_PATH)") from e
    except yaml.YAMLError as e:
        raise GroupsError(f"{path}: is not valid YAML: {e}") from e
    try:
        return parse_groups(raw, path)
    except ValueError as e:
        raise GroupsError(str(e)) from e
