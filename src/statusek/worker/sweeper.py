"""The deadline sweeper: finishes overdue instances, exactly once across replicas.

It sleeps until the earliest deadline in the database (an index lookup), and
is woken early when a nearer deadline is announced. Each pass locks a bounded
batch of overdue rows with SKIP LOCKED, so replicas split the work and a
command holding an instance's lock is never raced: whoever comes second sees
the row as the first left it. An overdue row that another transaction holds
(a long command window, another sweeper) is skipped, and the sweeper backs off
before it looks again instead of scanning in a tight loop until it is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from statusek.adapters.postgres.store import Store
from statusek.core.decide import sweep
from statusek.core.errors import StoreFailure, TransientError
from statusek.core.instance import Event, InstanceState
from statusek.core.views import Notification, notification_for
from statusek.worker.backoff import Backoff

log = structlog.get_logger(__name__)

# Retries while overdue rows are locked elsewhere: the first soon (the holder is usually a
# window of a few milliseconds), then doubling, never longer than this between looks.
_BLOCKED_FIRST = 0.05
_BLOCKED_CAP = 1.0


class Sweeper:
    def __init__(
        self,
        store: Store,
        *,
        batch: int,
        max_sleep: float,
        retry_cap: float,
        on_committed: Callable[[], None] = lambda: None,
    ):
        self._store = store
        self._batch = batch
        self._max_sleep = max_sleep
        self._retry_cap = retry_cap
        self._wake = asyncio.Event()
        self._target: datetime | None = None
        self._stopping = False
        self._on_committed = on_committed
        self.finished = 0
        self.passes = 0  # sweep_once calls, for tests and debugging a busy sweeper

    def deadline_announced(self, deadline: datetime) -> None:
        """Wake up if `deadline` comes before the moment this sweeper sleeps until."""
        if self._target is None or deadline < self._target:
            self._wake.set()

    def wake(self) -> None:
        """Look again now (after missed announcements, e.g. a lost listener)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        backoff = Backoff(self._retry_cap)
        blocked = Backoff(min(_BLOCKED_CAP, self._max_sleep), first=_BLOCKED_FIRST)
        while not self._stopping:
            try:
                locked = await self.sweep_once()
                if locked:
                    blocked.reset()
                if locked >= self._batch:
                    continue  # more are overdue right now
                await self._sleep_until_next_deadline(blocked)
                backoff.reset()
            except (TransientError, StoreFailure) as e:
                log.warning("sweeper failed, retrying", error=str(e))
                await backoff.wait()

    async def sweep_once(self) -> int:
        """Finish one batch of overdue instances; returns how many were locked."""
        self.passes += 1
        async with self._store.transaction() as tx:
            overdue = await tx.lock_overdue(self._batch)
            if not overdue:
                return 0
            now = await tx.now()
            changed: list[InstanceState] = []
            events: list[Event] = []
            notifications: list[Notification] = []
            for state in overdue.values():
                decision = sweep(state, now)
                if decision.state is None or not decision.events:
                    continue
                changed.append(decision.state)
                events.extend(decision.events)
                notifications.extend(n for e in decision.events if (n := notification_for(e, decision.state)))
            await tx.save(changed, events, notifications, {})
        self.finished += len(changed)
        if changed:
            log.info("instances finished by deadline", count=len(changed))
            self._on_committed()
        return len(overdue)

    async def _sleep_until_next_deadline(self, blocked: Backoff) -> None:
        self._wake.clear()
        earliest = await self._store.earliest_deadline()
        now = await self._store.now()
        delay = self._max_sleep
        if earliest is not None and earliest <= now:
            # Overdue yet not locked by the pass just made: another transaction holds it (or it
            # fell due a moment ago). Its commit or rollback sends no announcement, so look
            # again after a pause that grows while the row stays held.
            delay = blocked.delay
            blocked.delay = min(blocked.cap, blocked.delay * 2)
        elif earliest is not None:
            blocked.reset()
            delay = min(delay, (earliest - now).total_seconds())
        else:
            blocked.reset()
        self._target = now + timedelta(seconds=delay)
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass
        finally:
            self._target = None
