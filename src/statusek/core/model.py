"""Status models: the statuses a kind of task goes through, and their edges.

A model arrives as a plain mapping (decoded YAML or stored JSON) and is
validated here, so a broken definition never reaches an instance.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from statusek.core.access import Writers

MAX_NAME_LENGTH = 255


class StatusType(StrEnum):
    MANDATORY = "MANDATORY"
    OPTIONAL = "OPTIONAL"
    STOP_STATUS = "STOP-STATUS"


@dataclass(frozen=True, slots=True)
class Status:
    name: str
    type: StatusType
    description: str = ""
    after: tuple[str, ...] = ()
    # Who may set this status; None leaves it to the model's writers.
    writers: Writers | None = None


@dataclass(frozen=True, slots=True)
class StatusModel:
    """One version of a model; instances keep the version they were created with."""

    object_name: str
    statuses: tuple[Status, ...]
    description: str = ""
    instance_timeout: float | None = None
    heartbeat_timeout: float | None = None
    # Who may create, ping and cancel (and set statuses without writers of their own); None: anyone.
    writers: Writers | None = None
    # Seconds a finished instance is kept before it is purged (folded into the daily report first).
    retention: float | None = None
    # Seconds from create to finish beyond which an instance counts as an SLA breach in reports.
    sla: float | None = None
    version: int = 0
    _by_name: Mapping[str, Status] = field(init=False, repr=False, compare=False)
    _next: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.statuses}
        following: dict[str, list[str]] = {s.name: [] for s in self.statuses}
        for s in self.statuses:
            for prev in s.after:
                following[prev].append(s.name)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_next", {k: tuple(v) for k, v in following.items()})

    def status(self, name: str) -> Status | None:
        return self._by_name.get(name)

    def next_of(self, name: str) -> tuple[str, ...]:
        """Statuses that list `name` in their `after`."""
        return self._next.get(name, ())

    def writers_of(self, status_name: str) -> Writers | None:
        """Who may set a status: its own writers, else the model's."""
        status = self.status(status_name)
        own = status.writers if status is not None else None
        return own if own is not None else self.writers

    @property
    def mandatory(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statuses if s.type is StatusType.MANDATORY)

    def definition(self) -> dict[str, Any]:
        """The canonical mapping of this model, as stored and hashed."""
        out: dict[str, Any] = {"object_name": self.object_name}
        if self.description:
            out["description"] = self.description
        if self.instance_timeout is not None:
            out["instance_timeout"] = self.instance_timeout
        if self.heartbeat_timeout is not None:
            out["heartbeat_timeout"] = self.heartbeat_timeout
        if self.writers is not None:
            out["writers"] = list(self.writers.entries)
        if self.retention is not None:
            out["retention"] = self.retention
        if self.sla is not None:
            out["sla"] = self.sla
        out["statuses"] = [
            {
                "name": s.name,
                "type": s.type.value,
                **({"description": s.description} if s.description else {}),
                **({"after": list(s.after)} if s.after else {}),
                **({"writers": list(s.writers.entries)} if s.writers is not None else {}),
            }
            for s in self.statuses
        ]
        return out

    def digest(self) -> str:
        """Identical definitions hash alike, so reloading one creates no version."""
        canonical = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ModelError(ValueError):
    """A model definition is invalid; the message names source, model and field."""

    def __init__(self, source: str, object_name: str | None, field_path: str, problem: str):
        self.source = source
        self.object_name = object_name
        self.field_path = field_path
        self.problem = problem
        model = f"model {object_name!r}" if object_name else "model"
        super().__init__(f"{source}: {model}: {field_path}: {problem}")


def parse_model(raw: object, source: str = "<model>", version: int = 0) -> StatusModel:
    """Validate a decoded definition and build the model, or raise its first ModelError.

    `check_model` gives every problem instead of the first.
    """
    model, problems = check_model(raw, source, version)
    if problems:
        raise problems[0]
    assert model is not None
    return model


def check_model(
    raw: object, source: str = "<model>", version: int = 0
) -> tuple[StatusModel | None, list[ModelError]]:
    """The model, or every problem of the definition (the model is None then)."""
    if not isinstance(raw, Mapping):
        return None, [ModelError(source, None, "<root>", "a model must be a mapping")]
    name = raw.get("object_name")
    problems: list[ModelError] = []

    def fail(field_path: str, problem: str) -> None:
        problems.append(ModelError(source, name if isinstance(name, str) else None, field_path, problem))

    known = {
        "object_name",
        "description",
        "instance_timeout",
        "heartbeat_timeout",
        "statuses",
        "writers",
        "retention",
        "sla",
    }
    for key in raw:
        if key not in known:
            fail(str(key), f"unknown field (expected one of {', '.join(sorted(known))})")
    if not isinstance(name, str) or not name.strip():
        fail("object_name", "must be a non-empty string")
    elif len(name) > MAX_NAME_LENGTH:
        fail("object_name", f"longer than {MAX_NAME_LENGTH} characters")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        fail("description", "must be a string")
    timeouts = {k: _timeout(raw.get(k), k, fail) for k in ("instance_timeout", "heartbeat_timeout")}
    writers = _writers(raw.get("writers"), "writers", fail)
    durations = {k: _duration(raw.get(k), k, fail) for k in ("retention", "sla")}
    statuses = _statuses(raw.get("statuses"), fail)
    if problems or not isinstance(name, str) or not isinstance(description, str):
        return None, problems
    model = StatusModel(
        object_name=name,
        description=description,
        statuses=tuple(statuses),
        writers=writers,
        version=version,
        **timeouts,
        **durations,
    )
    return model, []


Fail = Callable[[str, str], None]


def _statuses(raw_statuses: object, fail: Fail) -> list[Status]:
    """The statuses, checked one by one, then their names and edges together."""
    if not isinstance(raw_statuses, Sequence) or isinstance(raw_statuses, str | bytes):
        fail("statuses", "must be a list")
        return []
    if not raw_statuses:
        fail("statuses", "must not be empty")
        return []
    declared = _declared_names(raw_statuses)
    parsed = [(i, s) for i, item in enumerate(raw_statuses) if (s := _status(item, i, fail)) is not None]
    _check_unique_names(parsed, fail)
    _check_edges(parsed, declared, fail)
    statuses = [s for _, s in parsed]
    _check_acyclic(statuses, fail)
    return statuses


def _declared_names(raw_statuses: Sequence[object]) -> set[str]:
    """The names the items declare, even items with other problems.

    So the followers of a broken item are not also reported as naming an unknown status.
    """
    return {
        item["name"]
        for item in raw_statuses
        if isinstance(item, Mapping) and isinstance(item.get("name"), str)
    }


def _check_unique_names(parsed: Sequence[tuple[int, Status]], fail: Fail) -> None:
    """No two statuses share a name."""
    seen: set[str] = set()
    for i, s in parsed:
        if s.name in seen:
            fail(f"statuses[{i}].name", f"duplicate status name {s.name!r}")
        seen.add(s.name)


def _check_edges(parsed: Sequence[tuple[int, Status]], declared: set[str], fail: Fail) -> None:
    """Each name in `after` names another declared status."""
    for i, s in parsed:
        for prev in s.after:
            if prev == s.name:
                fail(f"statuses[{i}].after", f"status {s.name!r} lists itself")
            elif prev not in declared:
                fail(f"statuses[{i}].after", f"unknown status {prev!r}")


def _check_acyclic(statuses: Sequence[Status], fail: Fail) -> None:
    """A cycle among the valid edges (unknown names and self-edges left out), reported with the rest."""
    names = {s.name for s in statuses}
    valid = [replace(s, after=tuple(p for p in s.after if p in names and p != s.name)) for s in statuses]
    cycle = _find_cycle(list({s.name: s for s in valid}.values()))
    if cycle:
        fail("statuses", "cycle in the edges: " + " -> ".join(cycle))


def _timeout(value: object, key: str, fail: Fail) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(key, "must be a number of seconds")
        return None
    if value <= 0:
        fail(key, f"must be positive, got {value}")
        return None
    return float(value)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a text such as `3600`, `90m`, `12h`, `30d`, `2w`.

    Raises ValueError (with a message for a person) unless the result is a positive number.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration: give seconds, or a number with s, m, h, d or w (30d)")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be positive, got {value!r}")
    return seconds


def optional_duration(value: object) -> float | None:
    """`parse_duration`, with None or an empty text meaning none (for settings)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_duration(value)


def _duration(value: object, key: str, fail: Fail) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        fail(key, str(e))
        return None


def _writers(value: object, where: str, fail: Fail) -> Writers | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(w, str) and w.strip() for w in value):
        fail(where, "must be a list of user or group names")
        return None
    if not value:
        fail(where, "must name at least one user or group (leave it out to let anyone write)")
        return None
    return Writers(tuple(dict.fromkeys(value)))


def _status(item: object, i: int, fail: Fail) -> Status | None:
    """The status at `statuses[i]`, after reporting each of its problems.

    None when its name or edges cannot be read; a status with other problems
    is still returned, so its edges are checked too (the model is not built
    when anything was reported).
    """
    where = f"statuses[{i}]"
    if not isinstance(item, Mapping):
        fail(where, "must be a mapping with name and type")
        return None
    for key in item:
        if key not in {"name", "type", "description", "after", "writers"}:
            fail(f"{where}.{key}", "unknown field (expected name, type, description, after, writers)")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        fail(f"{where}.name", "must be a non-empty string")
    elif len(name) > MAX_NAME_LENGTH:
        fail(f"{where}.name", f"longer than {MAX_NAME_LENGTH} characters")
    raw_type = item.get("type")
    status_type = StatusType.MANDATORY
    try:
        status_type = StatusType(str(raw_type))
    except ValueError:
        allowed = ", ".join(t.value for t in StatusType)
        fail(f"{where}.type", f"unknown type {raw_type!r} (expected {allowed})")
    description = item.get("description") or ""
    if not isinstance(description, str):
        fail(f"{where}.description", "must be a string")
        description = ""
    after = item.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, Sequence) or not all(isinstance(a, str) for a in after):
        fail(f"{where}.after", "must be a list of status names")
        return None
    writers = _writers(item.get("writers"), f"{where}.writers", fail)
    if not isinstance(name, str):
        return None
    return Status(name=name, type=status_type, description=description, after=tuple(after), writers=writers)


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The name in `names` that `name` most likely meant (case aside, or a typo), if any."""
    candidates = list(names)
    for candidate in candidates:
        if candidate.casefold() == name.casefold():
            return candidate
    folded = {c.casefold(): c for c in candidates}
    match = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.6)
    return folded[match[0]] if match else None


def _find_cycle(statuses: Sequence[Status]) -> list[str] | None:
    """Depth-first search over prev -> next edges; returns one cycle if any."""
    edges: dict[str, list[str]] = {s.name: [] for s in statuses}
    for s in statuses:
        for prev in s.after:
            edges[prev].append(s.name)
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        path.append(node)
        for nxt in edges[node]:
            if colour[nxt] == grey:
                return [*path[path.index(nxt) :], nxt]
            if colour[nxt] == white and (found := visit(nxt)):
                return found
        path.pop()
        colour[node] = black
        return None

    for node in edges:
        if colour[node] == white and (found := visit(node)):
            return found
    return None
