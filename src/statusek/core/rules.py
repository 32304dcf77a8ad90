"""Statusek's rules: when a status may be set, and when an instance finishes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from statusek.core.access import Sender, Writers
from statusek.core.codes import Code, FinishReason
from statusek.core.model import Status, StatusModel, StatusType, closest_name


@dataclass(frozen=True, slots=True)
class Verdict:
    code: Code
    message: str

    @property
    def ok(self) -> bool:
        return self.code is Code.SUCCESS


def readiness(
    model: StatusModel, is_set: Collection[str], status_name: str, token: str, sender: Sender
) -> Verdict:
    """Checks 3 to 7 of SPEC section 3, in order; the first failing one decides.

    Checks 1 and 2 (the instance exists and is open) need the instance itself
    and are made by the caller before this. The writer check comes right
    after 3: once the status is known, a sender who may not set it learns
    that before anything about the instance's progress.
    """
    status = model.status(status_name)
    if status is None:
        return Verdict(
            Code.STATUS_NAME_IS_NOT_FOUND_FOR_OBJECT,
            f"Status {status_name!r} is not a status of object {model.object_name!r} "
            f"(version {model.version}){unknown_name_hint(status_name, [s.name for s in model.statuses])}",
        )
    writers = model.writers_of(status_name)
    if not sender.may(writers):
        return not_allowed(sender, f"set status {status_name!r} of object {model.object_name!r}", writers)
    failed = (
        _mandatory_previous_missing(model, status, is_set, token)
        or _no_optional_previous_set(model, status, is_set, token)
        or _next_already_set(model, status, is_set, token)
    )
    if failed is not None:
        return failed
    if status_name in is_set:
        return Verdict(
            Code.STATUS_IS_ALREADY_SET,
            f"Status {status_name!r} is already set on instance {token}",
        )
    return Verdict(Code.SUCCESS, f"Status {status_name!r} can be set on instance {token}")


def _previous(model: StatusModel, status: Status, kind: StatusType) -> list[str]:
    """The statuses of type `kind` in the `after` of `status`, in its order."""
    previous = (model.status(p) for p in status.after)
    return [p.name for p in previous if p and p.type is kind]


def _mandatory_previous_missing(
    model: StatusModel, status: Status, is_set: Collection[str], token: str
) -> Verdict | None:
    """Check 4: every MANDATORY status in `after` is set."""
    missing = [p for p in _previous(model, status, StatusType.MANDATORY) if p not in is_set]
    if not missing:
        return None
    return Verdict(
        Code.NOT_ALL_PREVIOUS_MANDATORY_STATUSES_ARE_SET,
        f"Status {status.name!r} of instance {token} needs the previous mandatory "
        f"status(es) {', '.join(map(repr, missing))} to be set first",
    )


def _no_optional_previous_set(
    model: StatusModel, status: Status, is_set: Collection[str], token: str
) -> Verdict | None:
    """Check 5: with no MANDATORY but some OPTIONAL status in `after`, one of those is set."""
    if _previous(model, status, StatusType.MANDATORY):
        return None
    optional = _previous(model, status, StatusType.OPTIONAL)
    if not optional or any(p in is_set for p in optional):
        return None
    return Verdict(
        Code.NO_PREVIOUS_OPTIONAL_STATUS_IS_SET,
        f"Status {status.name!r} of instance {token} needs one of the previous optional "
        f"statuses {', '.join(map(repr, optional))} to be set first",
    )


def _next_already_set(
    model: StatusModel, status: Status, is_set: Collection[str], token: str
) -> Verdict | None:
    """Check 6: an OPTIONAL status can no longer be set once a status listing it in `after` is."""
    if status.type is not StatusType.OPTIONAL:
        return None
    later = [n for n in model.next_of(status.name) if n in is_set]
    if not later:
        return None
    return Verdict(
        Code.AT_LEAST_ONE_NEXT_STATUS_IS_SET,
        f"Optional status {status.name!r} of instance {token} can no longer be set: "
        f"its next status(es) {', '.join(map(repr, later))} are already set",
    )


def not_allowed(sender: Sender, action: str, writers: Writers | None) -> Verdict:
    """NOT_ALLOWED, naming the sender, what they may not do, and who may."""
    who = ", ".join(writers.entries) if writers else "nobody"
    return Verdict(Code.NOT_ALLOWED, f"User {sender.name!r} may not {action}: its writers are {who}")


def unknown_name_hint(name: str, known: Sequence[str], limit: int = 20, label: str = "known") -> str:
    """`: did you mean 'X'?; known: ...`, to end a message about an unknown name (case-sensitive)."""
    closest = closest_name(name, known)
    guess = f": did you mean {closest!r}?" if closest else ""
    if closest and closest.casefold() == name.casefold():
        guess += " (names are case-sensitive)"
    shown = ", ".join(known[:limit]) + (f" and {len(known) - limit} more" if len(known) > limit else "")
    return f"{guess}; {label}: {shown or 'none'}"


def finish_reason_after(model: StatusModel, is_set: Collection[str], status_name: str) -> FinishReason | None:
    """Whether setting `status_name` (already in `is_set`) finishes the instance."""
    status = model.status(status_name)
    if status is not None and status.type is StatusType.STOP_STATUS:
        return FinishReason.STOP_STATUS_IS_SET
    if all(m in is_set for m in model.mandatory):
        return FinishReason.ALL_MANDATORY_STATUSES_ARE_SET
    return None
