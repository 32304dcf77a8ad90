"""The outbox relay: publishes committed notifications with confirms, oldest first.

Rows leave the outbox only after the broker confirmed them, so a crash
re-sends (same `message_id`) rather than loses. Outbox rows are
partitioned by instance; one relay at a time sends a partition, which keeps
each instance's notifications in commit order.

Most rows are published by the pipeline that committed them (`direct`), right
after its commit. The relay is the safety net: it leaves a direct row alone for
`grace` seconds (its pipeline is publishing it), and every later row of that
instance too, and publishes it afterwards (its pipeline died, or could not
publish). So an instance's notifications leave in order whoever sends them.

The fence. A relay holds its partitions by session-level advisory locks on a
Postgres connection of its own (`RelaySession`), for as long as that session
lives, and holds no transaction open while it waits for confirms. A session
can end under a relay that does not know it yet (the server terminated it, the
link dropped): Postgres frees its locks at once, and another relay may take
them while the first still has rows to send. Two rules keep the two apart:

- a relay sends a wave of notifications only within `fence / 2` seconds of the
  start of the last statement its session answered (reading the rows, or a
  check made for the purpose); past that it checks the session first, and a
  session that fails the check is given up with every partition it held;
- a relay that takes a partition waits `fence` seconds before it reads or sends
  any row of it.

The first relay's last proof of its session started before the session ended,
which is before the second took the lock; so every wave the first sends leaves
before the second sends anything (given a monotonic clock, and frames that do
not spend `fence / 2` between the check and the broker: the margin). Rows it
got confirmed meanwhile it deletes through the pool, not the lost session, so
the second usually finds them gone; rows it could not delete the second sends
again, after them and in the same order (the same `message_id`): a repeat of
what a subscriber already has, never an older notification after a newer one.

A notification the broker nacks (a bound queue is full with overflow
reject-publish; the other queues got it) is sent again alone, after a growing
delay, and holds back its instance's later rows meanwhile (`sendable`):
healthy subscribers get a few copies, not a storm, and the full queue never
gets a later notification of that instance before the refused one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

import structlog

from statusek.adapters.postgres.relay_session import RelaySession
from statusek.adapters.postgres.store import OUTBOX_PARTITIONS, OutboxRow, Store
from statusek.adapters.rabbitmq.broker import Broker, Unconfirmed
from statusek.core.errors import StoreFailure, TransientError
from statusek.worker.backoff import Backoff
from statusek.worker.metrics import Metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Delay before a nacked notification goes again: NACK_FIRST, doubling, capped at NACK_CAP.
# Every re-send copies it to the healthy queues too (a fanout nack does not say which queue
# refused), so the waits grow fast: a queue full for 6 s costs a healthy one 3 copies, 14 s 4,
# 30 s 5, then one more every 30 s.
NACK_FIRST = 4.0
NACK_CAP = 30.0


def sendable(
    rows: Sequence[OutboxRow], held: set[str | None], backing_off: Collection[int] = ()
) -> list[OutboxRow]:
    """The rows of a batch (in id order) that a relay may publish now, in that order.

    An instance is held from its first row in flight (a pipeline is publishing it) or
    waiting out a nack's delay (`backing_off`: row ids) on: none of its later rows goes
    before it. `held` carries the held instances (global statuses: None) from one batch of
    a partition to the next; it is updated here.
    """
    out = []
    for row in rows:
        key = row.notification.instance_token
        if key in held:
            continue
        if row.in_flight or row.id in backing_off:
            held.add(key)
            continue
        out.append(row)
    return out


def nack_delay(attempts: int, cap: float = NACK_CAP) -> float:
    """Seconds before a notification nacked `attempts` times in a row goes again."""
    return min(cap, NACK_FIRST * 2.0 ** max(0, attempts - 1))


class OutboxRelay:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        batch: int,
        poll: float,
        retry_cap: float,
        grace: float = 2.0,
        metrics: Metrics | None = None,
        fence: float = 2.0,
        confirm_timeout: float = 10.0,
        open_session: Callable[[], Awaitable[RelaySession]] | None = None,
    ):
        self._store = store
        self._metrics = metrics or Metrics()
        self._broker = broker
        self._batch = batch
        self._poll = poll
        self._retry_cap = retry_cap
        self._grace = grace
        self._fence = fence
        self._confirm_timeout = confirm_timeout
        self._open_session = open_session or (lambda: RelaySession.open(store))
        self._dirty = asyncio.Event()
        self._stopping = False
        self._flushing = asyncio.Lock()
        self._session: RelaySession | None = None
        # Partitions this relay's session holds, and when each may first be sent (monotonic).
        self._owned: dict[int, float] = {}
        # Until when (monotonic) the session is known to hold its partitions.
        self._valid_until = 0.0
        # Nacked rows: id -> (nacks in a row, when it may go again).
        self._nacked: dict[int, tuple[int, float]] = {}
        self._timers: set[float] = set()
        self.published = 0

    def wake(self, *_: object) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()

    def close(self) -> None:
        """End the session: other relays may take its partitions after their fence."""
        self._drop_session()

    @property
    def session_pid(self) -> int | None:
        """The Postgres backend of the session holding this relay's partitions (for tests)."""
        return self._session.backend_pid if self._session is not None and self._session.alive else None

    async def run(self) -> None:
        backoff = Backoff(self._retry_cap)
        with contextlib.suppress(TransientError, StoreFailure):
            await self._ensure_session()  # else at the first flush that finds work
        while not self._stopping:
            # Also poll: a crashed replica may have left rows behind, or freed its partitions.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._dirty.wait()
            self._dirty.clear()
            if self._stopping:
                break  # the worker's last flush follows
            try:
                # A partition another relay holds is that relay's: it is woken by the same
                # commits. This one looks again at its next poll, should that relay die.
                await self.flush()
                backoff.reset()
            except (TransientError, StoreFailure) as e:
                log.warning("relay failed, retrying", error=str(e))
                self._dirty.set()
                await backoff.wait()

    async def flush(self) -> bool:
        """Publish what may be sent now; False if another relay holds one of the partitions."""
        async with self._flushing:
            try:
                return await self._flush()
            finally:
                if self._stopping:
                    # The last flush: let the other replicas' relays take over.
                    self._drop_session()

    async def _flush(self) -> bool:
        # One round trip finds the partitions with work: most wakes find none (direct publishing).
        waiting = await self._store.waiting_partitions(self._grace)
        if not waiting:
            return True
        session = await self._ensure_session()
        # Start at a random partition so replicas spread over partitions.
        start = random.randrange(len(waiting))
        complete = True
        ready: list[int] = []
        for partition in waiting[start:] + waiting[:start]:
            if partition not in self._owned:
                if not await self._on_session(session, session.acquire(partition)):
                    complete = False
                    continue
                self._owned[partition] = time.monotonic() + self._fence
                log.info("relay took an outbox partition", partition=partition, fence=self._fence)
            ready.append(partition)
        if ready:
            # Partitions just taken: whoever held them before has sent its last wave by then.
            await asyncio.sleep(max(0.0, max(self._owned[p] for p in ready) - time.monotonic()))
        for partition in ready:
            await self._flush_partition(session, partition)
        return complete

    async def _flush_partition(self, session: RelaySession, partition: int) -> None:
        after = 0
        held: set[str | None] = set()
        while True:
            started = time.monotonic()
            rows = await self._on_session(
                session, session.take(partition, self._batch, after=after, grace=self._grace)
            )
            self._valid_until = max(self._valid_until, started + self._fence / 2)
            now = time.monotonic()
            waiting = {i for i, (_, due) in self._nacked.items() if due > now}
            for due in (self._nacked[r.id][1] for r in rows if r.id in waiting):
                self._wake_at(due)
            send = sendable(rows, held, waiting)
            if send:
                await self._publish(session, send)
            if len(rows) < self._batch:
                return
            after = rows[-1].id

    async def _publish(self, session: RelaySession, rows: Sequence[OutboxRow]) -> None:
        by_message = {r.notification.message_id: r for r in rows}
        failure: Unconfirmed | None = None
        try:
            await self._broker.publish_waves(
                [r.notification for r in rows],
                timeout=self._confirm_timeout,
                may_continue=lambda: self._holds(session),
            )
            confirmed, nacked = list(rows), []
        except Unconfirmed as e:
            confirmed = [by_message[n.message_id] for n in e.confirmed]
            nacked = [by_message[n.message_id] for n in e.nacked]
            if not e.answered:
                failure = e
        if confirmed:
            # Through the pool, not the session: rows confirmed just before the session
            # ended are still deleted, and the relay that takes over finds them gone.
            await self._store.delete_outbox([r.id for r in confirmed])
            for r in confirmed:
                self._nacked.pop(r.id, None)
            self.published += len(confirmed)
            self._metrics.notifications.labels(path="relay").inc(len(confirmed))
        if nacked:
            now = time.monotonic()
            for r in nacked:
                attempts = self._nacked.get(r.id, (0, 0.0))[0] + 1
                due = now + nack_delay(attempts)
                self._nacked[r.id] = (attempts, due)
                self._wake_at(due)
            self._metrics.notifications_nacked.labels(path="relay").inc(len(nacked))
            log.warning(
                "the broker refused notifications (a subscriber queue is full?); sending them again later",
                count=len(nacked),
                attempts=max(self._nacked[r.id][0] for r in nacked),
            )
        if failure is not None:
            if not failure.timed_out:
                # The link failed: no frame of this relay can reach the broker any more, so
                # another replica's relay may take these partitions (after its fence) while
                # this one waits for its broker.
                self._drop_session()
            raise failure

    async def _holds(self, session: RelaySession) -> bool:
        """Whether the session may still be taken to hold its partitions: checked if in doubt."""
        if session is not self._session:
            return False
        if time.monotonic() < self._valid_until:
            return True
        started = time.monotonic()
        try:
            await self._on_session(session, session.verify())
        except (TransientError, StoreFailure):
            return False
        self._valid_until = started + self._fence / 2
        return True

    async def _ensure_session(self) -> RelaySession:
        if self._session is not None and self._session.alive:
            return self._session
        self._drop_session()
        session = self._session = await self._open_session()
        # Every free partition at once, so their fences run out now rather than in front of the
        # first notification each would otherwise wait behind (up to `fence` late).
        taken = await self._on_session(session, session.acquire_free(range(OUTBOX_PARTITIONS)))
        until = time.monotonic() + self._fence
        for partition in taken:
            self._owned[partition] = until
        if taken:
            log.info("relay took outbox partitions", partitions=taken, fence=self._fence)
        return session

    async def _on_session(self, session: RelaySession, work: Awaitable[T]) -> T:
        """Run a statement of the session; any failure gives the session up with its partitions."""
        try:
            return await work
        except BaseException:
            if session is self._session:
                log.warning(
                    "relay session lost: it gives up its outbox partitions", partitions=len(self._owned)
                )
                self._drop_session()
            raise

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._owned.clear()
        self._valid_until = 0.0
        # Another relay may have sent them meanwhile: their delay starts over with this one.
        self._nacked.clear()
        if session is not None:
            session.close()

    def _wake_at(self, when: float) -> None:
        if when in self._timers:
            return
        self._timers.add(when)

        def fire() -> None:
            self._timers.discard(when)
            self.wake()

        asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), fire)
