"""The purger: folds finished instances past their retention into the daily report, then deletes them.

Every replica runs one; the purge lock (see `adapters.postgres.retention`) lets one batch run at a
time across them. Batches are short transactions with a pause between them, so commands, queries
and sweepers never wait long behind a purge.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import structlog

from statusek.adapters.postgres.retention import purge_batch, retention_by_object
from statusek.adapters.postgres.store import Store
from statusek.core.errors import StoreFailure, TransientError
from statusek.worker.backoff import Backoff

log = structlog.get_logger(__name__)


class Purger:
    def __init__(
        self,
        store: Store,
        *,
        default_retention: float | None,
        batch: int,
        pause: float,
        every: float,
        retry_cap: float,
    ):
        self._store = store
        self._default = default_retention
        self._batch = batch
        self._pause = pause
        self._every = every
        self._retry_cap = retry_cap
        self._stopping = False
        self._wake = asyncio.Event()
        self.purged = 0

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(self._retry_cap)
        while not self._stopping:
            try:
                await self.purge_once()
                backoff.reset()
            except (TransientError, StoreFailure) as e:
                log.warning("purge failed, retrying", error=str(e))
                await backoff.wait()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await self._wake.wait()

    async def purge_once(self) -> int:
        """Purge every instance past its retention now; returns how many this replica purged.

        Stops early when another replica holds the purge lock: it is doing the same.
        """
        purged = 0
        for object_name, retention in (await retention_by_object(self._store, self._default)).items():
            after: datetime | None = None
            while not self._stopping:
                batch = await purge_batch(self._store, object_name, retention, self._batch, after)
                if batch is None:
                    return purged
                purged += batch.locked
                self.purged += batch.locked
                if batch.locked:
                    log.info("instances purged", object_name=object_name, count=batch.locked)
                if batch.locked < self._batch:
                    break
                after = batch.last_finished_at
                await asyncio.sleep(self._pause)
        return purged
