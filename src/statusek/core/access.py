"""Who may write what: the model's writer lists checked against a command's sender.

The sender is the AMQP `user_id` of the command, which RabbitMQ validates
against the user of the publishing connection, so it cannot be forged. A
command without one comes from `anonymous`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

ANONYMOUS = "anonymous"

Groups = Mapping[str, frozenset[str]]


@dataclass(frozen=True, slots=True)
class Writers:
    """A writer list: user names, group names, or `anonymous` for senders without user_id."""

    entries: tuple[str, ...]

    def admit(self, user: str | None, groups: Groups) -> bool:
        name = user or ANONYMOUS
        if name in self.entries:
            return True
        # `anonymous` is only ever admitted by name: no group holds it implicitly.
        return user is not None and any(user in groups.get(entry, ()) for entry in self.entries)


@dataclass(frozen=True, slots=True)
class Sender:
    """The sender of one command or query, with the groups in force."""

    user: str | None = None
    groups: Groups = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.user or ANONYMOUS

    def may(self, writers: Writers | None) -> bool:
        """No writer list means anyone may write, anonymous senders included."""
        return writers is None or writers.admit(self.user, self.groups)


# A command without user_id, judged without groups.
ANONYMOUS_SENDER = Sender()


def parse_groups(raw: object, source: str) -> dict[str, frozenset[str]]:
    """`{groups: {name: [user, ...]}}` as decoded from YAML; ValueError names the bad entry."""
    if not isinstance(raw, Mapping) or set(raw) != {"groups"}:
        raise ValueError(f"{source}: expected one top-level key, groups")
    groups = raw["groups"] or {}
    if not isinstance(groups, Mapping):
        raise ValueError(f"{source}: groups: must map group names to lists of user names")
    parsed: dict[str, frozenset[str]] = {}
    for name, members in groups.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: groups: {name!r}: a group name must be a non-empty string")
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise ValueError(f"{source}: groups.{name}: must be a list of user names")
        if ANONYMOUS in members:
            raise ValueError(
                f"{source}: groups.{name}: {ANONYMOUS!r} is not a user; name it in writers instead"
            )
        parsed[name] = frozenset(members)
    return parsed
