"""How replicas split the command partitions among themselves."""

from __future__ import annotations

import pytest

from statusek.core.partitions import routing_headers, share


def test_a_lone_replica_takes_every_partition() -> None:
    """With no other member, a replica's share is every partition."""
    assert share(4, [7], 7) == {0, 1, 2, 3}


def test_members_split_partitions_without_overlap_or_gap() -> None:
    """Three members' shares of eight partitions are disjoint and cover all eight."""
    members = [30, 10, 20]
    shares = [share(8, members, m) for m in members]
    assert sorted(p for s in shares for p in s) == list(range(8))
    assert sorted(len(s) for s in shares) == [2, 3, 3]


def test_every_member_computes_the_same_split() -> None:
    """The split depends on the set of members, not on the order they are listed in."""
    assert share(4, [2, 1], 1) == share(4, [1, 2], 1) == {0, 2}


def test_an_unregistered_replica_keeps_everything() -> None:
    """A replica missing from the membership (not registered yet, database down) gives nothing up."""
    assert share(3, [1, 2], 9) == {0, 1, 2}


def test_more_members_than_partitions_leaves_some_idle() -> None:
    """Members beyond the partition count get an empty share: they only stand by."""
    assert share(2, [1, 2, 3], 3) == frozenset()


def test_partitions_must_be_positive() -> None:
    """Zero partitions is a configuration error, not an empty split."""
    with pytest.raises(ValueError, match="at least 1"):
        share(0, [1], 1)


def test_commands_of_an_instance_carry_its_token_as_header() -> None:
    """A body naming an instance gives the instance_token header the broker hashes."""
    assert routing_headers({"instance_token": "7d3f", "status_name": "STARTED"}) == {"instance_token": "7d3f"}


def test_a_create_without_token_carries_no_header() -> None:
    """Without a token there is nothing to hash: the command may go to partition 0."""
    assert routing_headers({"object_name": "DATA EXPORT"}) == {}
