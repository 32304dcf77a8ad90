"""Which outbox rows a relay may send now: never one after its instance's row in flight."""

from __future__ import annotations

from statusek.adapters.postgres.store import OutboxRow
from statusek.app.relay import sendable
from statusek.core.views import Notification


def row(id: int, token: str | None, *, in_flight: bool = False) -> OutboxRow:
    return OutboxRow(id, Notification("status-changed", f"m{id}", token, {}, {}), in_flight=in_flight)


def test_rows_without_any_in_flight_are_all_sent_in_order() -> None:
    """Nothing in flight: the whole batch, in id order."""
    rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, None)]
    assert sendable(rows, set()) == rows


def test_an_in_flight_row_holds_its_instance_from_there_on() -> None:
    """The in-flight row and every later row of its instance stay; other instances go."""
    rows = [row(1, "a"), row(2, "b", in_flight=True), row(3, "a"), row(4, "b"), row(5, "c")]
    assert [r.id for r in sendable(rows, set())] == [1, 3, 5]


def test_an_instance_held_in_one_batch_stays_held_in_the_next() -> None:
    """`held` carries over the batches of one partition."""
    held: set[str | None] = set()
    assert sendable([row(1, "a", in_flight=True), row(2, "b")], held) == [row(2, "b")]
    assert [r.id for r in sendable([row(3, "a"), row(4, "b")], held)] == [4]


def test_global_statuses_are_held_by_their_own_in_flight_row() -> None:
    """Rows of no instance count as one instance of their own."""
    rows = [row(1, None, in_flight=True), row(2, None), row(3, "a")]
    assert [r.id for r in sendable(rows, set())] == [3]
