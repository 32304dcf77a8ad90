"""The outbox relay: publishes committed notifications with confirms, oldest first.

Rows leave the outbox only after the broker confirmed them, so a crash
re-sends (same `message_id`) rather than loses. Outbox rows are
partitioned by instance; one relay at a time sends a partition (an advisory
lock), which keeps each instance's notifications in commit order while the
relays of several replicas work in parallel.

Most rows are published by the pipeline that committed them (`direct`), right
after its commit. The relay is the safety net: it leaves a direct row alone for
`grace` seconds (its pipeline is publishing it), and every later row of that
instance too, and publishes it afterwards (its pipeline died, or could not
publish). So an instance's notifications leave in order whoever sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence

import structlog

from statusek.adapters.postgres.store import OutboxRow, Store
from statusek.adapters.rabbitmq.broker import Broker
from statusek.app.backoff import Backoff
from statusek.app.metrics import Metrics
from statusek.core.errors import StoreFailure, TransientError

log = structlog.get_logger(__name__)


def sendable(rows: Sequence[OutboxRow], held: set[str | None]) -> list[OutboxRow]:
    """The rows of a batch (in id order) that a relay may publish now, in that order.

    An instance is held from its first row in flight (a pipeline is publishing it) on: none of
    its later rows goes before it. `held` carries the held instances (global statuses: None)
    from one batch of a partition to the next; it is updated here.
    """
    out = []
    for row in rows:
        key = row.notification.instance_token
        if key in held:
            continue
        if row.in_flight:
            held.add(key)
            continue
        out.append(row)
    return out


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
    ):
        self._store = store
        self._metrics = metrics or Metrics()
        self._broker = broker
        self._batch = batch
        self._poll = poll
        self._retry_cap = retry_cap
        self._grace = grace
        self._dirty = asyncio.Event()
        self._stopping = False
        self.published = 0

    def wake(self, *_: object) -> None:
        self._dirty.set()

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()

    async def run(self) -> None:
        backoff = Backoff(self._retry_cap)
        while not self._stopping:
            # Also poll: a crashed replica may have left rows behind.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self._poll)
            self._dirty.clear()
            try:
                if not await self.flush():
                    # Another replica holds the relay lock and may have read
                    # its batch before our rows committed: look again soon.
                    await asyncio.sleep(0.02)
                    self._dirty.set()
                backoff.reset()
            except (TransientError, StoreFailure) as e:
                log.warning("relay failed, retrying", error=str(e))
                self._dirty.set()
                await backoff.wait()

    async def flush(self) -> bool:
        """Publish what may be sent now; False if another relay held one of the partitions."""
        # One round trip finds the partitions with work: most wakes find none (direct publishing).
        waiting = await self._store.waiting_partitions(self._grace)
        # Start at a random partition so replicas spread over partitions.
        if waiting:
            start = random.randrange(len(waiting))
            waiting = waiting[start:] + waiting[:start]
        complete = True
        for partition in waiting:
            complete &= await self._flush_partition(partition)
        return complete

    async def _flush_partition(self, partition: int) -> bool:
        after = 0
        held: set[str | None] = set()
        while True:
            async with self._store.transaction() as tx:
                rows = await tx.take_outbox(partition, self._batch, after=after, grace=self._grace)
                if rows is None:
                    return False
                send = sendable(rows, held)
                if send:
                    await self._broker.publish_notifications([r.notification for r in send])
                    await tx.delete_outbox([r.id for r in send])
            self.published += len(send)
            self._metrics.notifications.labels(path="relay").inc(len(send))
            if len(rows) < self._batch:
                return True
            after = rows[-1].id
