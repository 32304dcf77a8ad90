"""Status models: the statuses a kind of task goes through, and their edges.

A model arrives as a plain mapping (decoded YAML or stored JSON) and is
validated here, so a broken definition never reaches an instance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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


@dataclass(frozen=True, slots=True)
class StatusModel:
    """One version of a model; instances keep the version they were created with."""

    object_name: str
    statuses: tuple[Status, ...]
    description: str = ""
    instance_timeout: float | None = None
    heartbeat_timeout: float | None = None
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
        out["statuses"] = [
            {
                "name": s.name,
                "type": s.type.value,
                **({"description": s.description} if s.description else {}),
                **({"after": list(s.after)} if s.after else {}),
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
    """Validate a decoded definition and build the model, or raise ModelError."""
    if not isinstance(raw, Mapping):
        raise ModelError(source, None, "<root>", "a model must be a mapping")
    name = raw.get("object_name")

    def fail(field_path: str, problem: str) -> ModelError:
        return ModelError(source, name if isinstance(name, str) else None, field_path, problem)

    known = {"object_name", "description", "instance_timeout", "heartbeat_timeout", "statuses"}
    for key in raw:
        if key not in known:
            raise fail(str(key), f"unknown field (expected one of {', '.join(sorted(known))})")
    if not isinstance(name, str) or not name.strip():
        raise fail("object_name", "must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise fail("object_name", f"longer than {MAX_NAME_LENGTH} characters")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    timeouts = {k: _timeout(raw.get(k), k, fail) for k in ("instance_timeout", "heartbeat_timeout")}

    raw_statuses = raw.get("statuses")
    if not isinstance(raw_statuses, Sequence) or isinstance(raw_statuses, str | bytes):
        raise fail("statuses", "must be a list")
    if not raw_statuses:
        raise fail("statuses", "must not be empty")
    statuses = [_status(item, i, fail) for i, item in enumerate(raw_statuses)]

    seen: set[str] = set()
    for i, s in enumerate(statuses):
        if s.name in seen:
            raise fail(f"statuses[{i}].name", f"duplicate status name {s.name!r}")
        seen.add(s.name)
    for i, s in enumerate(statuses):
        for prev in s.after:
            if prev not in seen:
                raise fail(f"statuses[{i}].after", f"unknown status {prev!r}")
            if prev == s.name:
                raise fail(f"statuses[{i}].after", f"status {s.name!r} lists itself")
    cycle = _find_cycle(statuses)
    if cycle:
        raise fail("statuses", "cycle in the edges: " + " -> ".join(cycle))
    return StatusModel(
        object_name=name,
        description=description,
        statuses=tuple(statuses),
        version=version,
        **timeouts,
    )


def _timeout(value: object, key: str, fail: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(key, "must be a number of seconds")
    if value <= 0:
        raise fail(key, f"must be positive, got {value}")
    return float(value)


def _status(item: object, i: int, fail: Any) -> Status:
    where = f"statuses[{i}]"
    if not isinstance(item, Mapping):
        raise fail(where, "must be a mapping with name and type")
    for key in item:
        if key not in {"name", "type", "description", "after"}:
            raise fail(f"{where}.{key}", "unknown field (expected name, type, description, after)")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail(f"{where}.name", "must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise fail(f"{where}.name", f"longer than {MAX_NAME_LENGTH} characters")
    raw_type = item.get("type")
    try:
        status_type = StatusType(str(raw_type))
    except ValueError:
        allowed = ", ".join(t.value for t in StatusType)
        raise fail(f"{where}.type", f"unknown type {raw_type!r} (expected {allowed})") from None
    description = item.get("description") or ""
    if not isinstance(description, str):
        raise fail(f"{where}.description", "must be a string")
    after = item.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, Sequence) or not all(isinstance(a, str) for a in after):
        raise fail(f"{where}.after", "must be a list of status names")
    return Status(name=name, type=status_type, description=description, after=tuple(after))


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
