"""Wiring: one worker process = command pipeline + queries + sweeper + outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog

from statusek.adapters.model_files import load_groups, load_models
from statusek.adapters.postgres.connect import ConnectOptions
from statusek.adapters.postgres.membership import hold_membership, new_member_key
from statusek.adapters.postgres.migrate import ensure_current
from statusek.adapters.postgres.store import DEADLINE_CHANNEL, OUTBOX_CHANNEL, Store
from statusek.adapters.rabbitmq.broker import Broker, Consumer, Limits, Names
from statusek.core.access import Writers
from statusek.core.decide import Policy
from statusek.core.errors import TransientError
from statusek.event_loop import collect_less, loop_runner
from statusek.identity import Identity
from statusek.ops import OpsServer
from statusek.settings import Settings
from statusek.worker.backoff import Backoff
from statusek.worker.metrics import Metrics
from statusek.worker.partitions import Partitions
from statusek.worker.pipeline import CommandPipeline
from statusek.worker.purger import Purger
from statusek.worker.queries import QueryHandler
from statusek.worker.relay import OutboxRelay
from statusek.worker.sweeper import Sweeper

log = structlog.get_logger(__name__)
T = TypeVar("T")


# Seconds /readyz waits for a ping before it says Postgres is slow (the watch steps back later).
PING_SLOW = 2.0
# Seconds a stalled worker's window in progress gets before its channel closes anyway: it waits
# for a database that has not answered for `database_stall_timeout` already.
STALLED_WINDOW_WAIT = 1.0


async def _ping(store: Store) -> str | None:
    """None when Postgres answered, else why not."""
    try:
        await store.ping()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def database_options(s: Settings) -> ConnectOptions:
    """The time bounds and keepalives of every Postgres connection a worker opens."""
    return ConnectOptions(
        connect_timeout=s.database_connect_timeout,
        statement_timeout=s.database_statement_timeout,
        lock_timeout=s.database_lock_timeout,
        idle_in_transaction_timeout=s.database_idle_in_transaction_timeout,
        keepalives_idle=s.database_keepalives_idle,
        keepalives_interval=s.database_keepalives_interval,
        keepalives_count=s.database_keepalives_count,
    )


class StoppedWhileWaiting(Exception):
    """A stop was requested while the worker still waited for a dependency at start."""


@dataclass(frozen=True, slots=True)
class _Components:
    """What a connected worker runs beside its consumers (`Worker._build`)."""

    relay: OutboxRelay
    sweeper: Sweeper
    partitions: Partitions
    queries: QueryHandler
    purger: Purger
    member_key: int


class Worker:
    def __init__(self, settings: Settings, names: Names | None = None):
        self.settings = settings
        self.names = names or Names(partitions=settings.command_partitions)
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        self._queries_consumer: Consumer | None = None
        self.identity = Identity.current("worker")
        self.metrics = Metrics()
        for holding in (self.names.dead_letter, self.names.rejected):
            self.metrics.holding_queues_redeclared.labels(queue=holding)  # at 0 from the start
        self.ops: OpsServer | None = None
        self._store: Store | None = None
        self._broker: Broker | None = None
        self._consuming = False
        # The last reason a dependency could not be reached, for /readyz.
        self._waiting: dict[str, str] = {}
        # What the database watch (`_watch_database`) last saw, for /readyz.
        self._db_ok_at = time.monotonic()
        self._db_error: str | None = None
        self._db_ping_since: float | None = None
        self.stalled = False  # stepped back from the command queues: Postgres does not answer
        self._queries_lock = asyncio.Lock()
        self._stalled_queries: Consumer | None = None  # cancelled on stepping back, closed on rejoining
        # Which component ended the worker by failing, and how: `statusek worker` then exits 1.
        self.crashed: str | None = None

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        s = self.settings
        models, errors = load_models(s.model_paths())
        for error in errors:
            log.error("invalid model", error=str(error))
        if errors:
            raise errors[0]
        self.groups = load_groups(s.groups_path)
        if s.ops_port:
            # First, so that probes see why the worker is not ready while it waits.
            self.ops = OpsServer(
                s.ops_host,
                s.ops_port,
                self.metrics,
                self._readiness_checks(),
                before_scrape=self._refresh_gauges,
            )
            await self.ops.start()
        try:
            # SELECT only when the schema is current: the worker's role needs no DDL rights.
            await self._until_available(
                "postgres", lambda: ensure_current(s.database_url, migrate_on_start=s.migrate_on_start)
            )
            store = await self._until_available(
                "postgres",
                lambda: Store.open(s.database_url, max_size=s.db_pool_size, options=database_options(s)),
            )
            try:
                versions = await store.sync_models(models)
                log.info("models loaded", models=versions)
                self._store = store
                broker = Broker(
                    s.amqp_link_url,
                    self.names,
                    name=self.identity.connection_name,
                    limits=Limits(
                        delivery_limit=s.command_delivery_limit,
                        holding_max_length=s.holding_max_length,
                        query_ttl_ms=round(s.query_ttl * 1000),
                        dead_letter_body_bytes=s.dead_letter_body_bytes,
                        reply_queue_pattern=s.reply_queue_pattern,
                    ),
                )
                broker.on_reply_refused = lambda _queue: self.metrics.replies_refused.inc()
                broker.on_holding_queue_redeclared = lambda queue: (
                    self.metrics.holding_queues_redeclared.labels(queue=queue).inc()
                )
                self._broker = broker
                try:
                    await self._serve(store, broker)
                finally:
                    await broker.close()
            finally:
                self._store = None
                await store.close()
        except StoppedWhileWaiting as e:
            log.info("stopped before start: was waiting for a dependency", dependency=str(e))
        finally:
            if self.ops is not None:
                await self.ops.close()

    def _readiness_checks(self) -> dict[str, Callable[[], Awaitable[str | None]]]:
        async def postgres() -> str | None:
            # From the database watch rather than a query of its own: a probe never waits on a
            # black-holed database, and probes cost it nothing.
            if self._store is None:
                return self._waiting.get("postgres", "connecting")
            return self._database_problem()

        async def rabbitmq() -> str | None:
            if self._broker is None or not self._broker.is_open:
                return self._waiting.get("rabbitmq", "connecting")
            return None

        async def consumer() -> str | None:
            if self._stop.is_set():
                return "shutting down"
            if self.stalled:
                return "stepped back from the command queues until Postgres answers"
            return None if self._consuming else "not consuming"

        return {"postgres": postgres, "rabbitmq": rabbitmq, "consumer": consumer}

    async def _refresh_gauges(self) -> None:
        store, broker = self._store, self._broker
        if store is not None:
            backlog = await store.backlog()
            self.metrics.outbox_backlog.set(backlog.outbox_rows)
            self.metrics.outbox_oldest_age.set(backlog.outbox_oldest_age)
            self.metrics.sweeper_lag.set(backlog.sweeper_lag)
        if broker is not None and broker.is_open:
            for queue, ready in (await broker.queue_depths()).items():
                self.metrics.queue_messages.labels(queue=queue).set(ready)

    async def _until_available(self, what: str, connect: Callable[[], Awaitable[T]]) -> T:
        """Wait for a dependency at start rather than dying: it may start after us.

        A stop requested meanwhile (SIGTERM) ends the wait with StoppedWhileWaiting.
        """
        backoff = Backoff(self.settings.retry_backoff_max, first=0.5)
        while True:
            if self._stop.is_set():
                raise StoppedWhileWaiting(what)
            try:
                result = await connect()
                self._waiting.pop(what, None)
                return result
            except TransientError as e:
                self._waiting[what] = str(e)
                log.warning("waiting for dependency", dependency=what, error=str(e))
                await backoff.wait(interrupt=self._stop)

    async def _serve(self, store: Store, broker: Broker) -> None:
        """Run the components until a stop is requested or one of them crashes, then drain."""
        parts = self._build(store, broker)
        # Kept apart: a stopping sweeper finishes its sweep, where the other tasks are cancelled.
        sweeping = asyncio.create_task(parts.sweeper.run(), name="sweeper")
        tasks = [sweeping, *self._start_background(store, broker, parts)]
        consuming = asyncio.create_task(
            self._consume(broker, parts.partitions, parts.queries), name="consumer"
        )
        watchdog: asyncio.Task[None] | None = None
        try:
            await self._until_stop_or_crash(consuming, tasks)
            log.info("stopping: finishing in-flight work")
            watchdog = asyncio.create_task(
                report_if_stuck(self.settings.shutdown_timeout + STUCK_AFTER), name="shutdown watchdog"
            )
            # arq-style drain: take nothing new, finish what is in progress, then close.
            await self._stop_consuming(consuming)
            await self._finish_in_flight(parts, sweeping)
            await self._close(parts, tasks)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            # Cancelled from outside (a caller that stopped waiting), nothing started here may go
            # on without us: a task left running keeps its connections, and when it fails later
            # its exception is never retrieved. After a graceful stop every task is done already.
            await cancel_and_wait([consuming, *tasks, *parts.partitions.tasks()])

    def _build(self, store: Store, broker: Broker) -> _Components:
        """The relay, sweeper, command partitions, query handler and purger, wired to one another."""
        s = self.settings
        relay = OutboxRelay(
            store,
            broker,
            batch=s.outbox_batch,
            poll=s.outbox_poll,
            retry_cap=s.retry_backoff_max,
            grace=s.outbox_grace,
            metrics=self.metrics,
        )
        sweeper = Sweeper(
            store,
            batch=s.sweep_batch,
            max_sleep=s.sweep_max_sleep,
            retry_cap=s.retry_backoff_max,
            on_committed=relay.wake,
        )
        policy = Policy(
            default_instance_timeout=s.default_instance_timeout,
            global_writers=Writers(tuple(s.global_status_writers)) if s.global_status_writers else None,
        )

        def make_pipeline(partition: int, queue: str) -> CommandPipeline:
            return CommandPipeline(
                store,
                broker,
                window=s.window,
                max_body_bytes=s.max_body_bytes,
                policy=policy,
                retry_cap=s.retry_backoff_max,
                on_deadline=sweeper.deadline_announced,
                on_committed=relay.wake,
                fault_hooks=s.fault_hooks,
                metrics=self.metrics,
                groups=self.groups,
                direct_publish=s.direct_publish,
                partition=partition,
                queue=queue,
            )

        member_key = new_member_key()
        partitions = Partitions(
            self.names.command_queues,
            broker,
            prefetch=s.prefetch,
            make_pipeline=make_pipeline,
            member_key=member_key,
            rebalance_every=s.rebalance_every,
            drain_timeout=s.shutdown_timeout,
            metrics=self.metrics,
        )
        self.metrics.not_consuming(self.names.command_queues)
        self.partitions = partitions
        queries = QueryHandler(
            store, broker, max_body_bytes=s.max_body_bytes, metrics=self.metrics, groups=self.groups
        )
        purger = Purger(
            store,
            default_retention=s.default_retention,
            batch=s.purge_batch,
            pause=s.purge_pause,
            every=s.purge_every,
            retry_cap=s.retry_backoff_max,
        )
        return _Components(relay, sweeper, partitions, queries, purger, member_key)

    def _start_background(self, store: Store, broker: Broker, parts: _Components) -> list[asyncio.Task[Any]]:
        """Start what runs beside the consumers (the sweeper aside): cancelled last, at `_close`."""
        s = self.settings
        on_notify, on_listening = self._notification_handlers(parts)
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(parts.relay.run(), name="relay"),
            asyncio.create_task(
                store.listen_forever(
                    (OUTBOX_CHANNEL, DEADLINE_CHANNEL), on_notify, on_listening, retry_cap=s.retry_backoff_max
                ),
                name="listener",
            ),
            asyncio.create_task(self._housekeeping(store), name="housekeeping"),
            asyncio.create_task(
                self._watch_database(store, broker, parts.partitions, parts.queries), name="database watch"
            ),
            asyncio.create_task(parts.purger.run(), name="purger"),
        ]
        if len(parts.partitions.slots) > 1:
            # One partition needs no balance: every replica stands in the same line.
            tasks.append(
                asyncio.create_task(
                    hold_membership(
                        s.database_url,
                        parts.member_key,
                        parts.partitions.members_changed,
                        every=s.rebalance_every,
                        retry_cap=s.retry_backoff_max,
                        options=database_options(s),
                    ),
                    name="membership",
                )
            )
        return tasks

    def _notification_handlers(
        self, parts: _Components
    ) -> tuple[Callable[[str, str], None], Callable[[], None]]:
        """The listener's callbacks: a notification, and each (re)connection of its own."""
        relay, sweeper = parts.relay, parts.sweeper

        def on_notify(channel: str, payload: str) -> None:
            if channel == OUTBOX_CHANNEL:
                relay.wake()
            elif channel == DEADLINE_CHANNEL:
                with contextlib.suppress(ValueError):
                    sweeper.deadline_announced(datetime.fromisoformat(payload))

        listens = 0

        def on_listening() -> None:
            nonlocal listens
            listens += 1
            if listens > 1:
                self.metrics.reconnects.labels(dependency="postgres").inc()
            relay.wake()
            sweeper.wake()

        return on_notify, on_listening

    async def _until_stop_or_crash(
        self, consuming: asyncio.Task[None], tasks: list[asyncio.Task[Any]]
    ) -> None:
        """Wait for a stop request, or for any component to end (a crash, logged)."""
        stop_wait = asyncio.create_task(self._stop.wait(), name="stop request")
        try:
            done, _ = await asyncio.wait([stop_wait, consuming, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        for task in done:
            if task is not stop_wait and (failure := task.exception()):
                log.error("component crashed", component=task.get_name(), exc_info=failure)
                self.crashed = self.crashed or f"{task.get_name()}: {type(failure).__name__}: {failure}"

    async def _stop_consuming(self, consuming: asyncio.Task[None]) -> None:
        """Take nothing new: no more (re)connecting, and the queries' consumer cancelled."""
        self._consuming = False
        await cancel_and_wait([consuming])
        if self._queries_consumer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._queries_consumer.cancel()

    async def _finish_in_flight(self, parts: _Components, sweeping: asyncio.Task[None]) -> None:
        """Let the windows, the sweep and the queries in progress end, within the shutdown timeout."""
        parts.partitions.stop()
        parts.sweeper.stop()
        try:
            # Each partition finishes its window, then its held but unprocessed commands
            # return to the head of its queue, in order, for the next consumer in line.
            async with asyncio.timeout(self.settings.shutdown_timeout + 3):
                await asyncio.gather(parts.partitions.release_all(), sweeping, parts.queries.drain())
        except TimeoutError:
            log.warning("shutdown timeout: unfinished deliveries go back to the queue")
        self.metrics.not_consuming(self.names.command_queues)

    async def _close(self, parts: _Components, tasks: list[asyncio.Task[Any]]) -> None:
        """Flush the outbox relay (briefly), then cancel what runs in the background."""
        parts.relay.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(1.0, self.settings.shutdown_timeout / 2)):
                await parts.relay.flush()
        await cancel_and_wait(tasks)
        log.info(
            "worker stopped",
            applied=parts.partitions.applied,
            swept=parts.sweeper.finished,
            published=parts.relay.published,
            handovers=parts.partitions.handovers,
        )

    async def _consume(self, broker: Broker, partitions: Partitions, queries: QueryHandler) -> None:
        """Connect, declare, consume; when the connection drops, do it all again."""
        s = self.settings
        backoff = Backoff(s.retry_backoff_max, first=0.2)
        while True:
            try:
                await broker.open()
                await broker.declare()
                await partitions.subscribe_all()
                async with self._queries_lock:
                    # Stepped back meanwhile: the database watch consumes again when Postgres answers.
                    self._queries_consumer = (
                        None
                        if self.stalled
                        else await broker.consume(self.names.queries, s.query_concurrency, queries.on_message)
                    )
            except TransientError as e:
                self._waiting["rabbitmq"] = str(e)
                log.warning("waiting for rabbitmq", error=str(e))
                await backoff.wait()
                continue
            backoff.reset()
            self._waiting.pop("rabbitmq", None)
            self._consuming = True
            log.info("consuming", commands=self.names.command_queues, queries=self.names.queries)
            self.started.set()
            await broker.closed()
            self._consuming = False
            self.metrics.not_consuming(self.names.command_queues)
            self.metrics.reconnects.labels(dependency="rabbitmq").inc()
            log.warning("rabbitmq connection lost; reconnecting")

    def _database_problem(self) -> str | None:
        """What is wrong with Postgres as the database watch sees it, or None."""
        if self.stalled:
            silent = time.monotonic() - self._db_ok_at
            return f"no answer for {silent:.0f} s; stepped back from the command queues ({self._db_error})"
        if self._db_error is not None:
            return self._db_error
        pending = time.monotonic() - self._db_ping_since if self._db_ping_since is not None else 0.0
        if pending > PING_SLOW:
            return f"no answer for {pending:.1f} s"
        return None

    async def _watch_database(
        self, store: Store, broker: Broker, partitions: Partitions, queries: QueryHandler
    ) -> None:
        """Ask Postgres every second; step back from the queues while it has not answered for long.

        A worker whose database does not answer (black-holed, packets dropped: its statements
        wait for their timeouts, then fail, and are retried) would otherwise keep the command
        queues, of which it is the single active consumer, while a standby that reaches Postgres
        waits in line. After `database_stall_timeout` without an answer it leaves every line (the
        broker makes the next consumer active) and the queries; once Postgres answers it joins
        them again, at the back. A ping is never cancelled while it waits: cancelling a query of
        a black-holed connection waits for the cancel request to fail, and the watch must not.
        """
        s = self.settings
        every = min(1.0, s.database_stall_timeout / 4)
        self._db_ok_at = time.monotonic()
        ping: asyncio.Task[str | None] | None = None
        try:
            while True:
                if ping is None:
                    self._db_ping_since = started = time.monotonic()
                    ping = asyncio.create_task(_ping(store), name="database ping")
                done, _ = await asyncio.wait({ping}, timeout=every)
                answered = False
                if ping in done:
                    self._db_error = ping.result()
                    self._db_ping_since = ping = None
                    answered = self._db_error is None
                    if answered:
                        self._db_ok_at = time.monotonic()
                silent = time.monotonic() - self._db_ok_at
                if self.stalled and answered:
                    await self._rejoin(broker, partitions, queries)
                elif not self.stalled and silent >= s.database_stall_timeout:
                    await self._step_back(partitions, silent)
                if ping is None:
                    await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))
        finally:
            if ping is not None:
                ping.cancel()

    async def _step_back(self, partitions: Partitions, silent: float) -> None:
        self.stalled = True
        self.metrics.database_stalled.set(1)
        self.metrics.database_stalls.inc()
        log.error(
            "postgres does not answer: stepping back from the queues for a standby",
            silent_s=round(silent, 1),
            error=self._db_error,
        )
        await partitions.pause(window_timeout=STALLED_WINDOW_WAIT)
        async with self._queries_lock:
            consumer, self._queries_consumer = self._queries_consumer, None
        if consumer is not None:
            # Cancelled, not closed: queries in progress still answer on their channel.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await consumer.cancel()
            self._stalled_queries = consumer

    async def _rejoin(self, broker: Broker, partitions: Partitions, queries: QueryHandler) -> None:
        log.warning("postgres answers again: consuming again, behind whoever took over")
        self.stalled = False
        self.metrics.database_stalled.set(0)
        old, self._stalled_queries = self._stalled_queries, None
        if old is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await old.close()
        try:
            await partitions.resume()
            async with self._queries_lock:
                if self._queries_consumer is None and broker.is_open:
                    self._queries_consumer = await broker.consume(
                        self.names.queries, self.settings.query_concurrency, queries.on_message
                    )
        except TransientError as e:
            # The broker is going: its reconnection joins every line again.
            log.warning("could not consume again yet", error=str(e))

    async def _housekeeping(self, store: Store) -> None:
        """Expire idempotency records older than the window, now and then."""
        while True:
            try:
                removed = await store.expire_processed(self.settings.idempotency_window)
                if removed:
                    log.info("idempotency records expired", count=removed)
            except TransientError as e:
                log.warning("housekeeping failed, will retry", error=str(e))
            await asyncio.sleep(self.settings.housekeeping_every)


# Seconds past the shutdown timeout after which a drain that has not ended is reported.
STUCK_AFTER = 15.0
# The exit status of a worker that left without finishing its drain (a second signal, or stuck).
EXIT_UNFINISHED = 70


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], every: float = 1.0, cancels: int = 5) -> None:
    """Cancel the tasks and wait for each to end, cancelling again every `every` s those still running.

    A cancel can be lost inside a library (Python 3.11's `wait_for` returns its inner result when
    the cancel lands as that completes), and a loop that lost one goes on; the next one ends it.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(cancels):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    if pending:
        log.error("tasks still running after every cancel", tasks=sorted(t.get_name() for t in pending))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a crash was logged when it happened


def exit_now(status: int) -> None:
    """Leave at once, as a crash would: unacked deliveries go back to their queues when the
    connections drop, and a window committed but not acked is answered from the record."""
    sys.stderr.flush()
    os._exit(status)


async def report_if_stuck(after: float, exit: Callable[[int], None] = exit_now) -> None:
    """Log where every task waits if a shutdown is still going `after` seconds in, then exit.

    Every step of the drain is bounded, so this only fires for a bug (a task that does not end
    when cancelled); the stacks are the evidence to find it. Exiting keeps the bug from also
    keeping the process alive until something kills it.
    """
    await asyncio.sleep(after)
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        log.error("shutdown stuck: a task still waits", task=task.get_name(), stack=stack.getvalue())
    log.error("exiting with the drain unfinished", status=EXIT_UNFINISHED)
    exit(EXIT_UNFINISHED)


def stop_on_signal(worker: Worker, name: str, exit: Callable[[int], None] = exit_now) -> None:
    """The first SIGTERM/SIGINT drains; a second one, sent while it drains, leaves at once."""
    if worker.stop_requested:
        log.warning("second stop signal: exiting without finishing in-flight work", signal=name)
        exit(EXIT_UNFINISHED)
        return
    log.info("stop signal: draining (send it again to exit at once)", signal=name)
    worker.request_stop()


class ComponentCrashed(Exception):
    """A component of the worker failed: the worker drained and stopped (the log has the traceback)."""


def run_worker(settings: Settings) -> None:
    """`statusek worker`: serve until SIGTERM or SIGINT, or until a component crashes (raised)."""
    collect_less()
    crashed: list[str] = []

    async def main() -> None:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_on_signal, worker, sig.name)
        await worker.run()
        if worker.crashed is not None:
            crashed.append(worker.crashed)

    loop_runner(settings)(main())
    if crashed:
        # Not a clean exit: a supervisor that restarts only on failure must restart this one.
        raise ComponentCrashed(crashed[0])
