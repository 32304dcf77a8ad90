"""The outbox relay: publishes committed notifications with confirms, oldest first.

Rows leave the outbox only after the broker confirmed them, so a crash
re-sends (same `message_id`) rather than loses. Outbox rows are
partitioned by instance; one relay at a time sends a partition (an advisory
lock), which keeps each instance's notifications in commit order while the
relays of several replicas work in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import structlog

from statusek.adapters.postgres.store import OUTBOX_PARTITIONS, Store
from statusek.adapters.rabbitmq.broker import Broker
from statusek.app.backoff import Backoff
from statusek.core.errors import StoreFailure, TransientError

log = structlog.get_logger(__name__)


class OutboxRelay:
    def __init__(self, store: Store, broker: Broker, *, batch: int, poll: float, retry_cap: float):
        self._store = store
        self._broker = broker
        self._batch = batch
        self._poll = poll
        self._retry_cap = retry_cap
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
        """Publish until every partition is empty; False if another relay held one of them."""
        complete = True
        # Start at a random partition so replicas spread over partitions.
        start = random.randrange(OUTBOX_PARTITIONS)
        for i in range(OUTBOX_PARTITIONS):
            complete &= await self._flush_partition((start + i) % OUTBOX_PARTITIONS)
        return complete

    async def _flush_partition(self, partition: int) -> bool:
        while True:
            async with self._store.transaction() as tx:
                rows = await tx.take_outbox(partition, self._batch)
                if rows is None:
                    return False
                if not rows:
                    return True
                await self._broker.publish_notifications([r.notification for r in rows])
                await tx.delete_outbox([r.id for r in rows])
            self.published += len(rows)
