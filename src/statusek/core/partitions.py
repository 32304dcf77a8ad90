"""Which command partitions a replica should apply, given who else is running.

Every replica consumes every partition (single active consumer), so any one
of them can take over at once. Balance comes from each replica stepping back
in the line of the partitions that are not its share: the replica at the
head of a partition's line applies it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

# The AMQP header a publisher sets on every command to keep one instance's commands in order
# when there is more than one partition: the broker routes by its hash.
INSTANCE_TOKEN_HEADER = "instance_token"


def share(partitions: int, members: Collection[int], me: int) -> frozenset[int]:
    """The partitions replica `me` should be first in line for, among `members`.

    Partitions are dealt round-robin in the order of the members' keys, so every
    replica computes the same split from the same membership. A replica that is
    not (yet) among the members claims nothing in particular: it keeps every
    partition it holds, the safe choice when membership is unknown.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    ranked = sorted(set(members))
    if me not in ranked:
        return frozenset(range(partitions))
    rank, count = ranked.index(me), len(ranked)
    return frozenset(p for p in range(partitions) if p % count == rank)


def routing_headers(body: Mapping[str, object]) -> dict[str, str]:
    """The headers that route a command to its instance's partition (none for a create without token)."""
    token = body.get("instance_token")
    return {INSTANCE_TOKEN_HEADER: str(token)} if token is not None else {}
