"""Command partitions of one replica: a consumer and a pipeline per partition, and hand-over.

Every replica consumes every partition; the broker's single active consumer
decides who applies each. A replica that finds itself applying a partition
outside its share (core.partitions.share) steps back: it finishes the window
in progress, closes the partition's channel, which returns what it held to
the head of the queue in order for the next consumer in line, and consumes
again at the back of the line. Membership only steers the balance; order
and exactly-once never depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.rabbitmq.broker import Broker, Consumer
from statusek.core.partitions import share
from statusek.worker.metrics import Metrics
from statusek.worker.pipeline import CommandPipeline

log = structlog.get_logger(__name__)


class PartitionSlot:
    """One partition queue: the channel consuming it and the pipeline applying what it delivers."""

    def __init__(
        self,
        index: int,
        queue: str,
        broker: Broker,
        prefetch: int,
        make_pipeline: Callable[[int, str], CommandPipeline],
        on_delivery: Callable[[PartitionSlot], None],
    ):
        self.index = index
        self.queue = queue
        self._broker = broker
        self._prefetch = prefetch
        self._make_pipeline = make_pipeline
        self._on_delivery = on_delivery
        self.pipeline: CommandPipeline | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: Consumer | None = None
        self.applied = 0  # by the pipelines already released
        self.stepped_back_at = float("-inf")

    @property
    def total_applied(self) -> int:
        return self.applied + (self.pipeline.applied if self.pipeline is not None else 0)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The running pipeline's task, while subscribed."""
        return self._task

    async def subscribe(self) -> None:
        """Join the partition's line of consumers, at its back."""
        pipeline = self._make_pipeline(self.index, self.queue)
        task = asyncio.create_task(pipeline.run(), name=f"pipeline {self.queue}")

        async def on_message(delivery: AbstractIncomingMessage) -> None:
            self._on_delivery(self)
            await pipeline.on_message(delivery)

        self.pipeline, self._task = pipeline, task
        self._consumer = await self._broker.consume(self.queue, self._prefetch, on_message)

    def stop(self) -> None:
        """Take no new window (the one in progress is finished)."""
        if self.pipeline is not None:
            self.pipeline.stop()

    async def release(self, timeout: float) -> None:
        """Finish the window in progress, then give back every delivery held.

        The channel closes only after the window is settled: the next consumer
        in line must not apply a later command of an instance before it.
        """
        pipeline, task, consumer = self.pipeline, self._task, self._consumer
        self.pipeline = self._task = self._consumer = None
        if pipeline is not None:
            pipeline.stop()
            self.applied += pipeline.applied
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                log.warning("partition window still running at hand-over", queue=self.queue)
            except Exception:
                log.exception("partition pipeline failed", queue=self.queue)
        if consumer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await consumer.close()

    async def abandon(self, timeout: float) -> None:
        """Give back every delivery held at once, the window in progress included, then stop.

        For a window that cannot end (its database does not answer). The channel closes first:
        a stopped pipeline gives its window back by a nack, and a nack on an open channel would
        have the broker deliver those commands again to this same, still active, consumer,
        behind the later ones it holds, which the close then returns ahead of them. Closed
        first, the channel returns all in queue order. The window, if it still commits, is
        ordered by the partition's fence before the next consumer's.
        """
        pipeline, task, consumer = self.pipeline, self._task, self._consumer
        self.pipeline = self._task = self._consumer = None
        if consumer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await consumer.close()
        if pipeline is not None:
            pipeline.stop()
            self.applied += pipeline.applied
        if task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)

    async def step_back(self, timeout: float) -> None:
        self.stepped_back_at = time.monotonic()
        await self.release(timeout)
        await self.subscribe()


class Partitions:
    """The slots of every command partition, and when to hand one over."""

    def __init__(
        self,
        queues: Sequence[str],
        broker: Broker,
        *,
        prefetch: int,
        make_pipeline: Callable[[int, str], CommandPipeline],
        member_key: int,
        rebalance_every: float,
        drain_timeout: float,
        metrics: Metrics | None = None,
    ):
        self.slots = [
            PartitionSlot(i, q, broker, prefetch, make_pipeline, self._delivered)
            for i, q in enumerate(queues)
        ]
        self._key = member_key
        self._every = rebalance_every
        self._drain_timeout = drain_timeout
        # Unknown membership: keep everything (see core.partitions.share).
        self._share = frozenset(range(len(self.slots)))
        self._lock = asyncio.Lock()
        self._handovers: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Stepped back from every partition (the database stalls): no line is joined until resumed.
        self.paused = False
        self._metrics = metrics or Metrics()
        self.handovers = 0

    @property
    def applied(self) -> int:
        return sum(s.total_applied for s in self.slots)

    def members_changed(self, members: frozenset[int]) -> None:
        new = share(len(self.slots), members, self._key)
        if new == self._share:
            return
        log.info("partition share", share=sorted(new), members=len(members))
        self._share = new
        # Step back from every partition outside the share at once, whether or not this
        # replica heads its line (the broker does not say): the owners, who never step
        # back, come to the head of their lines within one change, not one delivery and
        # `rebalance_every` at a time each.
        for slot in self.slots:
            if slot.index not in new:
                self._hand_over(slot)

    async def subscribe_all(self) -> None:
        """(Re)join every partition's line: after a (re)connection, every old channel is gone.

        While paused, only the old channels are let go: `resume` joins the lines.
        """
        async with self._lock:
            for slot in self.slots:
                await slot.release(self._drain_timeout)
                if not self.paused and not self._stopping:
                    await slot.subscribe()

    async def pause(self, window_timeout: float) -> None:
        """Leave every partition's line, so that the next consumer in each applies its commands.

        The window in progress is not waited for (it waits for a database that does not answer):
        its deliveries return to the head of the queue with the rest, unapplied or not
        (`PartitionSlot.abandon`). Either way each is applied once: the next consumer's window
        takes the partition's fence, so it runs after this one's transaction has ended on the
        server (committed, or ended by the server's timeouts), and finds its replies if it
        committed. Pipelines left running end on their own (`window_timeout` is waited for them)
        and apply nothing more: the channel of their deliveries has closed.
        """
        async with self._lock:
            if self.paused or self._stopping:
                return
            self.paused = True
            log.warning("stepping back from every command partition", queues=[s.queue for s in self.slots])
            await asyncio.gather(*(slot.abandon(window_timeout) for slot in self.slots))
            self._metrics.not_consuming(slot.queue for slot in self.slots)

    async def resume(self) -> None:
        """Join every partition's line again, at its back (whoever took over keeps applying)."""
        async with self._lock:
            if not self.paused or self._stopping:
                return
            self.paused = False
            log.info("consuming the command partitions again")
            for slot in self.slots:
                await slot.subscribe()

    def stop(self) -> None:
        self._stopping = True
        for slot in self.slots:
            slot.stop()

    async def release_all(self) -> None:
        for task in list(self._handovers):
            with contextlib.suppress(Exception):
                await task
        async with self._lock:
            await asyncio.gather(*(slot.release(self._drain_timeout) for slot in self.slots))

    def tasks(self) -> list[asyncio.Task[None]]:
        """What runs for the partitions now: the pipelines and the hand-overs."""
        return [*self._handovers, *(slot.task for slot in self.slots if slot.task is not None)]

    def _delivered(self, slot: PartitionSlot) -> None:
        # A delivery means this replica is the active consumer of the slot's partition.
        if self._stopping or slot.index in self._share:
            return
        if time.monotonic() - slot.stepped_back_at < self._every:
            return
        self._hand_over(slot)

    def _hand_over(self, slot: PartitionSlot) -> None:
        # Not subscribed yet (the membership came first): nothing to hand over, and the first
        # delivery outside the share may hand it over at once.
        if self._stopping or slot.pipeline is None:
            return
        slot.stepped_back_at = time.monotonic()
        task = asyncio.create_task(self._step_back(slot), name=f"hand-over {slot.queue}")
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _step_back(self, slot: PartitionSlot) -> None:
        async with self._lock:
            if self._stopping or slot.pipeline is None:
                return
            log.info("handing a partition over to its owner", queue=slot.queue)
            try:
                await slot.step_back(self._drain_timeout)
                self.handovers += 1
                self._metrics.handovers.inc()
            except Exception as e:
                # The connection is going: the reconnection subscribes every slot again.
                log.warning("partition hand-over interrupted", queue=slot.queue, error=str(e))
