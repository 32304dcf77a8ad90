"""Which outbox rows a relay may send now: never one after its instance's row in flight."""

from __future__ import annotations

from statusek.adapters.postgres.store import OutboxRow
from statusek.adapters.rabbitmq.broker import notification_waves
from statusek.core.views import Notification
from statusek.worker.relay import NACK_CAP, nack_delay, sendable


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


def test_a_row_waiting_out_a_nack_holds_its_instance_like_one_in_flight() -> None:
    """A nacked row in its delay stays, and so do its instance's later rows; others go."""
    rows = [row(1, "a"), row(2, "b"), row(3, "a"), row(4, "c")]
    assert [r.id for r in sendable(rows, set(), backing_off={1})] == [2, 4]


def test_a_nacked_row_waits_longer_each_time_up_to_a_cap() -> None:
    """4 s after the first nack, doubling, never more than the cap."""
    assert [nack_delay(n) for n in (1, 2, 3, 4)] == [4.0, 8.0, 16.0, 30.0]
    assert nack_delay(20) == NACK_CAP


def test_waves_take_one_notification_of_each_instance_at_a_time() -> None:
    """Wave k holds the k-th notification of every instance, in the order given."""
    ns = [row(i, t).notification for i, t in enumerate(["a", "a", "b", None, "a", "b", None])]
    assert [[n.message_id for n in wave] for wave in notification_waves(ns)] == [
        ["m0", "m2", "m3"],
        ["m1", "m5", "m6"],
        ["m4"],
    ]
