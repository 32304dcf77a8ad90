"""The command pipeline: a window of deliveries, one transaction, then replies and acks.

Deliveries of `statusek.commands` arrive in queue order (one active consumer,
see docs/guarantees.md, "Ordering"). They are parsed, then decided in that order against
states locked for the whole window, written in one transaction together with
their notifications (outbox) and replies (idempotency), and only then
answered and acked.

The pipeline publishes the window's notifications itself, beside the replies,
and the next window's statement deletes their outbox rows once confirmed
(`DELETE_WHEN_IDLE`): the relay is only the safety net (a crash or a broker
failure after commit), see `OUTBOX_INSERT` for which rows it publishes
directly and `relay.sendable` for how the relay leaves them alone meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import structlog
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.postgres.store import GivenReply, OutboxRow, ReplyKey, Store, Transaction
from statusek.adapters.rabbitmq import settle
from statusek.adapters.rabbitmq.broker import Broker, Unconfirmed
from statusek.adapters.rabbitmq.parser import Envelope, try_parse_delivery
from statusek.core.access import Groups, Sender
from statusek.core.codes import Code
from statusek.core.decide import Policy, decide
from statusek.core.errors import InvalidMessage, StoreFailure, TransientError
from statusek.core.global_status import GlobalEvent, decide_global, global_notification
from statusek.core.instance import Event, InstanceState
from statusek.core.messages import (
    COMMANDS,
    DEADLINE_HEADER,
    Cancel,
    Create,
    Ping,
    Reply,
    SetGlobalStatus,
    SetStatus,
)
from statusek.core.model import StatusModel
from statusek.core.views import Notification, notification_for
from statusek.worker import faults
from statusek.worker.backoff import Backoff
from statusek.worker.metrics import WINDOW_STAGES, Metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery: AbstractIncomingMessage
    envelope: Envelope
    reply: Reply
    duplicate: bool = False
    decided: bool = False  # this window applied the command and recorded its reply (a repeat finds it)
    refused: bool = False  # not applied and not recorded: expired, or its message_id reused


class CommandPipeline:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        window: int,
        max_body_bytes: int,
        policy: Policy,
        retry_cap: float,
        on_deadline: Callable[[datetime], None] = lambda _: None,
        on_committed: Callable[[], None] = lambda: None,
        fault_hooks: bool = False,
        metrics: Metrics | None = None,
        groups: Groups | None = None,
        direct_publish: bool = True,
        partition: int = 0,
        queue: str = "statusek.commands",
    ):
        self._store = store
        self._partition = partition
        self._queue = queue
        self._groups: Groups = groups or {}
        self._broker = broker
        self._window = window
        self._max_body = max_body_bytes
        self._policy = policy
        self._retry_cap = retry_cap
        self._on_deadline = on_deadline
        self._on_committed = on_committed
        self._fault_hooks = fault_hooks
        self._metrics = metrics or Metrics()
        self._direct_publish = direct_publish
        # None only wakes `run` for a stop.
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._stopping = False
        # Outbox rows committed by this process's window, for it to publish after commit.
        self._direct: list[OutboxRow] = []
        # Outbox rows published and confirmed, for the next window's transaction to delete.
        self._published: list[int] = []
        # Bodies over the limit, cut on arrival: their original size, by id() of the delivery.
        self._cut_from: dict[int, int] = {}
        # When each delivery waiting in the inbox arrived, by id() of the delivery, as `_cut_from`.
        self._arrived: dict[int, float] = {}
        stages = self._metrics.window_stage
        self._stage_queued, self._stage_apply, self._stage_answer, self._stage_ack = (
            stages.labels(stage=stage) for stage in WINDOW_STAGES
        )
        self.applied = 0
        self.published = 0  # notifications published directly

    async def on_message(self, delivery: AbstractIncomingMessage) -> None:
        # Only the single active consumer ever gets a delivery.
        self._metrics.active_consumer.labels(queue=self._queue).set(1)
        keep = self._broker.limits.dead_letter_body_bytes
        if (size := settle.cut_oversized(delivery, self._max_body, keep)) is not None:
            # Known by identity only while it waits in the inbox: `process` takes it out.
            self._cut_from[id(delivery)] = size
        self._arrived[id(delivery)] = time.perf_counter()
        await self._inbox.put(delivery)

    async def run(self) -> None:
        """Process windows until stopped; a window in progress is always finished."""
        while not self._stopping:
            # At once when idle; the window is whatever queued up meanwhile, so it grows only under load.
            if self._published and self._inbox.empty():
                try:
                    async with asyncio.timeout(DELETE_WHEN_IDLE):
                        first = await self._inbox.get()
                except TimeoutError:
                    await self._delete_published()
                    continue
            else:
                first = await self._inbox.get()
            if first is None:
                continue
            window = [first]
            while len(window) < self._window and not self._inbox.empty():
                if (delivery := self._inbox.get_nowait()) is not None:
                    window.append(delivery)
            try:
                await self.process(window)
            except Exception:
                # Never let one window stop the worker; what was not acked comes back.
                log.exception("window failed; its deliveries go back to the queue", size=len(window))
                with contextlib.suppress(Exception):
                    await self._requeue(window)
        # What is still in the inbox goes back to the queue with the channel.
        self._arrived.clear()
        await self._delete_published()

    async def _delete_published(self) -> None:
        """Delete the outbox rows published since the last window, when no window comes to do it."""
        if not self._published:
            return
        ids, self._published = self._published, []
        try:
            await self._store.delete_outbox(ids)
        except Exception as e:
            # Published: the relay sends them again after its grace (at least once, in order).
            log.warning("published notifications stay in the outbox", error=str(e), count=len(ids))

    def stop(self) -> None:
        """Finish the window in progress and take no other.

        Deliveries still in the inbox are not processed: closing the channel
        returns them to the head of the queue, in order, for the next active
        consumer. Processing them here while a standby already consumes
        would break per-instance order.
        """
        self._stopping = True
        self._inbox.put_nowait(None)
        # Its channel closes next: the next consumer in line takes over.
        self._metrics.active_consumer.labels(queue=self._queue).set(0)

    async def process(self, deliveries: Sequence[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        for d in deliveries:
            if (arrived := self._arrived.pop(id(d), None)) is not None:
                self._stage_queued.observe(started - arrived)
        # Deliveries of a channel that has closed since are back in the queue
        # already; applying them now would only apply them twice.
        cut_from = {id(d): size for d in deliveries if (size := self._cut_from.pop(id(d), None))}
        deliveries = [d for d in deliveries if settle.is_live(d)]
        valid, invalid = self._parse(deliveries, cut_from)
        if self._fault_hooks:
            faults.fail_if_asked(deliveries)
        self._direct = []
        outcomes, failed = await self._apply_with_retry(valid)
        applied = time.perf_counter()
        direct, self._direct = self._direct, []
        # Started even when there is nothing to answer, and always awaited before the next window.
        publishing = asyncio.ensure_future(self._publish_direct(direct))
        if outcomes is None:
            await publishing
            await self._requeue(deliveries)
            return
        self._stage_apply.observe(applied - started)
        invalid.extend(failed)
        try:
            # Confirms are awaited together: one round trip per window, not per reply or notification.
            await asyncio.gather(
                *(settle.answer(self._broker, o.delivery, o.reply) for o in outcomes),
                *(settle.dead_letter(self._broker, d, e, cut_from=cut_from.get(id(d))) for d, e in invalid),
                publishing,
            )
            answered = time.perf_counter()
            self._stage_answer.observe(answered - applied)
            await settle.ack_all(deliveries)
            self._stage_ack.observe(time.perf_counter() - answered)
        except TransientError as e:
            # The effects are committed; unacked deliveries come back and get
            # their stored reply (message_id) or a rule's answer.
            log.warning("could not answer or ack after commit", error=str(e))
        finally:
            await publishing  # never raises
        self._log_window(deliveries, outcomes, invalid, time.perf_counter() - started)

    def _parse(
        self, deliveries: Sequence[AbstractIncomingMessage], cut_from: dict[int, int]
    ) -> tuple[
        list[tuple[AbstractIncomingMessage, Envelope]], list[tuple[AbstractIncomingMessage, InvalidMessage]]
    ]:
        """The window's commands, parsed, and the deliveries that are none (cut or malformed), with why."""
        valid: list[tuple[AbstractIncomingMessage, Envelope]] = []
        invalid: list[tuple[AbstractIncomingMessage, InvalidMessage]] = []
        for d in deliveries:
            if (size := cut_from.get(id(d))) is not None:
                detail = f"body is {size} bytes, the limit is {self._max_body}"
                invalid.append((d, InvalidMessage("too-large", detail)))
                continue
            parsed = try_parse_delivery(d, COMMANDS, self._max_body)
            if isinstance(parsed, InvalidMessage):
                invalid.append((d, parsed))
            else:
                valid.append((d, parsed))
        return valid, invalid

    def _log_window(
        self,
        deliveries: Sequence[AbstractIncomingMessage],
        outcomes: Sequence[Outcome],
        invalid: Sequence[tuple[AbstractIncomingMessage, InvalidMessage]],
        elapsed: float,
    ) -> None:
        """Metrics and a log line per command of a window answered in `elapsed` seconds."""
        elapsed_ms = round(elapsed * 1000, 2)
        self._metrics.window_size.observe(len(deliveries))
        for o in outcomes:
            self._metrics.commands.labels(routing_key=o.envelope.kind, code=o.reply.code).inc()
            self._metrics.command_duration.observe(elapsed)
            log.info(
                "command",
                routing_key=o.envelope.kind,
                message_id=o.envelope.message_id,
                correlation_id=o.envelope.correlation_id,
                user=o.envelope.user_id,
                instance_token=o.reply.data.get("instance_token") or _token_of(o.envelope),
                code=o.reply.code,
                duplicate=o.duplicate,
                redelivered=o.delivery.redelivered,
                window=len(deliveries),
                duration_ms=elapsed_ms,
            )
        for d, error in invalid:
            self._metrics.dead_lettered.labels(reason=error.reason).inc()
            self._metrics.commands.labels(routing_key=d.routing_key or "", code=Code.INVALID_MESSAGE).inc()
            log.warning(
                "dead-lettered",
                routing_key=d.routing_key,
                message_id=d.message_id,
                correlation_id=d.correlation_id,
                reason=error.reason,
                detail=error.detail,
            )

    async def _publish_direct(self, rows: Sequence[OutboxRow]) -> None:
        """Publish a committed window's notifications and wait for the confirms.

        Their rows are deleted by the next window's statement (`_published`), or after
        `DELETE_WHEN_IDLE` when none comes: no round trip of their own on the way to the next
        window. Never raises. Only what was not confirmed stays in the outbox for the relay:
        rows a queue refused (nack) wait out the relay's grace, as a first delay before the copy
        every healthy queue gets again; rows whose fate is unknown (the link failed, confirms
        timed out) are marked for it to take at once, and it is woken. Either way an instance's
        later notifications wait for them (`OUTBOX_INSERT`).
        """
        if not rows:
            return
        try:
            # No timeout of its own, as for the replies beside it: a lost link fails it. Should the
            # confirms take longer than the relay's grace, the relay sends the rows too (twice, in order).
            await self._broker.publish_notifications([r.notification for r in rows])
        except Unconfirmed as e:
            confirmed = {n.message_id for n in e.confirmed}
            self._confirmed([r for r in rows if r.notification.message_id in confirmed])
            left = [r for r in rows if r.notification.message_id not in confirmed]
            if e.nacked:
                self._metrics.notifications_nacked.labels(path="direct").inc(len(e.nacked))
            log.warning(
                "notifications not confirmed after commit; the relay sends them",
                error=str(e),
                count=len(left),
                nacked=len(e.nacked),
            )
            if not e.answered:
                await self._hand_to_relay([r.id for r in left])
            return
        except Exception as e:
            log.warning(
                "could not publish notifications after commit; the relay sends them",
                error=f"{type(e).__name__}: {e}",
                count=len(rows),
            )
            await self._hand_to_relay([r.id for r in rows])
            return
        self._confirmed(rows)

    def _confirmed(self, rows: Sequence[OutboxRow]) -> None:
        self._published.extend(r.id for r in rows)
        self.published += len(rows)
        self._metrics.notifications.labels(path="direct").inc(len(rows))

    async def _hand_to_relay(self, ids: Sequence[int]) -> None:
        try:
            await self._store.undirect_outbox(ids)
        except Exception as e:
            log.warning("could not hand notifications to the relay at once", error=str(e))
        self._on_committed()

    async def _requeue(self, deliveries: Sequence[AbstractIncomingMessage]) -> None:
        last = await settle.requeue_all(deliveries, self._broker.delivery_limit_in_force)
        if last:
            # The broker dead-letters these itself (reason delivery_limit); count them here.
            self._metrics.dead_lettered.labels(reason="delivery-limit").inc(last)
            log.error(
                "poison commands given back for the last time; the broker dead-letters them", count=last
            )

    async def _apply_with_retry(
        self, valid: list[tuple[AbstractIncomingMessage, Envelope]]
    ) -> tuple[list[Outcome] | None, list[tuple[AbstractIncomingMessage, InvalidMessage]]]:
        """Apply the window; transient failures are retried in place to keep order.

        Returns None when stopping before it could be applied (the caller
        requeues). A permanent store failure splits the window so only the
        command that causes it is dead-lettered.
        """
        backoff = Backoff(self._retry_cap)
        while True:
            try:
                return await self._apply(valid), []
            except TransientError as e:
                if self._stopping:
                    return None, []
                log.warning("transient failure, retrying window", error=str(e), size=len(valid))
                await backoff.wait()
                valid = [v for v in valid if settle.is_live(v[0])]
            except Exception as e:
                # A refusal by Postgres or a bug: find the one command causing it
                # and dead-letter it, so it cannot stop the worker.
                reason = "store-failure" if isinstance(e, StoreFailure) else "internal-error"
                if len(valid) == 1:
                    log.exception("command cannot be applied", reason=reason)
                    return [], [(valid[0][0], InvalidMessage(reason, f"{type(e).__name__}: {e}"))]
                log.error("window cannot be applied, applying one by one", error=str(e))
                outcomes: list[Outcome] = []
                failed: list[tuple[AbstractIncomingMessage, InvalidMessage]] = []
                for item in valid:
                    single, single_failed = await self._apply_with_retry([item])
                    if single is None:
                        return None, []
                    outcomes.extend(single)
                    failed.extend(single_failed)
                return outcomes, failed

    async def _apply(self, valid: list[tuple[AbstractIncomingMessage, Envelope]]) -> list[Outcome]:
        if not valid:
            return []
        async with self._store.transaction(fence=self._partition) as tx:
            # A delivery whose channel closed while the fence was awaited is the broker's again:
            # its redelivery (flagged, so looked up) may already be applied on another replica,
            # and this copy, not flagged, would not look.
            valid = [v for v in valid if settle.is_live(v[0])]
            window = _Window(tx, self._policy, self._groups, direct=self._direct_publish)
            outcomes = await window.apply(valid)
            deleting = list(self._published)
            earliest, direct = await window.save(deleting)
            if self._fault_hooks:
                await faults.stall_if_asked(valid)
        if self._fault_hooks:
            faults.crash_if_asked([(o.delivery, o.decided) for o in outcomes])
        self._direct.extend(direct)
        del self._published[: len(deleting)]
        self.applied += sum(1 for o in outcomes if not (o.duplicate or o.refused))
        if len(window.notifications) > len(direct):
            self._on_committed()  # rows for the relay
        if earliest is not None:
            self._on_deadline(earliest)
        return outcomes


def _token_of(envelope: Envelope) -> str | None:
    token = getattr(envelope.body, "instance_token", None)
    return str(token) if token is not None else None  # None: a global status


# A message without message_id is known by its digest for this long (and up to twice
# as long: the keys are per period, and the current and previous periods are looked up).
DIGEST_PERIOD = 300


def by_digest(envelope: Envelope) -> bool:
    """Whether a command is known by its digest (no message_id): its keys need the database clock."""
    return envelope.message_id is None and envelope.digest is not None


def identity(
    delivery: AbstractIncomingMessage, envelope: Envelope, now: datetime | None
) -> tuple[ReplyKey | None, tuple[ReplyKey, ...]]:
    """The key a command's reply is recorded under, and the keys that make it a repeat.

    Keys are scoped by the sender (the AMQP user_id RabbitMQ validated): two users' message_ids
    never meet. A `message_id` is both the record and the repeat key. Without one, the key is the
    delivery's digest in the current period, and only a redelivery is looked up: then it was perhaps
    applied before a crash between commit and ack, and its own record from a
    moment ago says so. A first delivery is never taken for a repeat, so two
    identical messages published on purpose both take effect, unless the
    second comes back redelivered within the period: it then counts as the
    first. A redelivery more than one to two periods after its first delivery
    is judged again.
    """
    sender = envelope.user_id or ""
    if envelope.message_id is not None:
        key = (sender, envelope.message_id)
        return key, (key,)
    if envelope.digest is None:
        return None, ()
    if now is None:
        raise ValueError("a key by digest needs the database clock (see by_digest)")
    period = int(now.timestamp() // DIGEST_PERIOD)
    key = (sender, f"digest:{envelope.digest}:{period}")
    if not _redelivered(delivery):
        return key, ()
    return key, (key, (sender, f"digest:{envelope.digest}:{period - 1}"))


def reused(key: ReplyKey, envelope: Envelope) -> Reply:
    """The answer to a message_id its sender already used for a different command: nothing applied."""
    sender = f" by user {key[0]!r}" if key[0] else ""
    return Reply.fail(
        Code.MESSAGE_ID_REUSED,
        f"message_id {key[1]!r} was already used{sender} for a different command; "
        f"this {envelope.kind} was not applied: give every command its own message_id",
    )


def expired(envelope: Envelope, now: datetime) -> Reply:
    """The answer to a command whose sender's deadline passed before a worker could apply it."""
    assert envelope.deadline is not None
    late = (now - envelope.deadline).total_seconds()
    return Reply.fail(
        Code.EXPIRED,
        f"{envelope.kind} was not applied: its deadline {envelope.deadline.isoformat()} had passed "
        f"{late:.3f} s before a worker took it ({DEADLINE_HEADER})",
    )


def _redelivered(delivery: AbstractIncomingMessage) -> bool:
    return bool(delivery.redelivered) or settle.delivery_count(delivery) > 0


# Seconds an idle pipeline waits for a window to delete its published outbox rows before it
# deletes them alone: far below the relay's grace, which would send them again.
DELETE_WHEN_IDLE = 0.05


class _Window:
    """The in-memory state of one transaction: states change as commands apply.

    Global statuses have no instance: their log is one more state, its last seq, locked (after
    the instances) only by windows that hold a `set-global-status`.
    """

    def __init__(self, tx: Transaction, policy: Policy, groups: Groups, *, direct: bool = False):
        self.tx = tx
        self.direct = direct
        self.policy = policy
        self.groups = groups
        self.states: dict[UUID, InstanceState] = {}
        self.changed: dict[UUID, InstanceState] = {}
        self.new_deadlines: list[datetime] = []
        self.events: list[Event] = []
        self.notifications: list[Notification] = []
        self.replies: dict[ReplyKey, GivenReply] = {}
        self.models: dict[tuple[str, int], StatusModel] = {}
        self.global_seq = 0
        self.global_events: list[GlobalEvent] = []

    async def apply(self, valid: list[tuple[AbstractIncomingMessage, Envelope]]) -> list[Outcome]:
        """Decide the window's commands in order, against its locked states; nothing is written yet."""
        identities = await self._identities(valid)
        stored, latest, now = await self._lock(valid, identities)
        return [
            self._outcome(delivery, env, mid, repeats, stored, latest, now)
            for (delivery, env), (mid, repeats) in zip(valid, identities, strict=True)
        ]

    async def _identities(
        self, valid: list[tuple[AbstractIncomingMessage, Envelope]]
    ) -> list[tuple[ReplyKey | None, tuple[ReplyKey, ...]]]:
        """Each command's reply key and repeat keys (`identity`)."""
        # Digest keys are per period of the database clock read under the fence, a round trip only
        # a message without message_id costs; decisions use the clock read once the window's
        # instances are locked (`lock_window`).
        clock = await self.tx.now() if any(by_digest(env) for _, env in valid) else None
        return [identity(delivery, env, clock) for delivery, env in valid]

    async def _lock(
        self,
        valid: list[tuple[AbstractIncomingMessage, Envelope]],
        identities: list[tuple[ReplyKey | None, tuple[ReplyKey, ...]]],
    ) -> tuple[dict[ReplyKey, GivenReply], dict[str, StatusModel], datetime]:
        """Lock the window's instances (and the global log, if needed) and load their models.

        Returns the replies already given for the repeat keys, the latest model of each object
        the window creates an instance of, and the clock read once its instances are locked.
        """
        tx = self.tx
        commands = [env.body for _, env in valid]
        tokens = [t for c in commands if (t := getattr(c, "instance_token", None)) is not None]
        repeats_of = (key for _, repeats in identities for key in repeats)
        creates = (c.object_name for c in commands if isinstance(c, Create))
        self.states, stored, versions, now = await tx.lock_window(tokens, repeats_of, creates)
        if any(isinstance(c, SetGlobalStatus) for c in commands):
            self.global_seq = await tx.lock_global_log()
        return stored, await self._load_models(versions), now

    async def _load_models(self, versions: dict[str, int]) -> dict[str, StatusModel]:
        """Load the locked instances' models and the `versions`; returns the latter by object name."""
        self.models = await self.tx.models(
            [(s.object_name, s.model_version) for s in self.states.values()] + list(versions.items())
        )
        return {name: self.models[(name, version)] for name, version in versions.items()}

    def _outcome(
        self,
        delivery: AbstractIncomingMessage,
        env: Envelope,
        mid: ReplyKey | None,
        repeats: tuple[ReplyKey, ...],
        stored: dict[ReplyKey, GivenReply],
        latest: dict[str, StatusModel],
        now: datetime,
    ) -> Outcome:
        """One command's outcome; its effects join the window's, its reply is recorded under `mid`."""
        if (repeat := self._repeat(delivery, env, repeats, stored)) is not None:
            return repeat
        if env.deadline is not None and now > env.deadline:
            # Not recorded either: a retry with the same message_id and a new deadline applies.
            return Outcome(delivery, env, expired(env, now), refused=True)
        command = env.body
        if isinstance(command, SetGlobalStatus):
            reply = self._set_global(command, env, now)
        else:
            assert isinstance(command, Create | SetStatus | Ping | Cancel)  # parse() used COMMANDS
            reply = self._decide(command, env, latest, now)
        if mid is not None:
            self.replies[mid] = GivenReply(env.fingerprint, reply)
        return Outcome(delivery, env, reply, decided=mid is not None)

    def _repeat(
        self,
        delivery: AbstractIncomingMessage,
        env: Envelope,
        repeats: tuple[ReplyKey, ...],
        stored: dict[ReplyKey, GivenReply],
    ) -> Outcome | None:
        """The outcome of a command answered before (stored, or earlier in this window), else None."""
        seen = next((key for key in repeats if key in stored or key in self.replies), None)
        if seen is None:
            return None
        given = stored.get(seen) or self.replies[seen]
        if given.fingerprint in (None, env.fingerprint):
            return Outcome(delivery, env, given.reply, duplicate=True)
        # Not recorded: the message_id keeps answering the command it was first used for.
        return Outcome(delivery, env, reused(seen, env), refused=True)

    def _set_global(self, command: SetGlobalStatus, env: Envelope, now: datetime) -> Reply:
        reply, set_global = decide_global(
            command,
            self.global_seq,
            now,
            Sender(env.user_id, self.groups),
            self.policy.global_writers,
        )
        if set_global is not None:
            self.global_seq = set_global.seq
            self.global_events.append(set_global)
            self.notifications.append(global_notification(set_global))
        return reply

    def _decide(
        self,
        command: Create | SetStatus | Ping | Cancel,
        env: Envelope,
        latest: dict[str, StatusModel],
        now: datetime,
    ) -> Reply:
        token = command.instance_token
        state = self.states.get(token) if token else None
        decision = decide(
            command,
            state,
            self._models_for(command, state, latest),
            now,
            new_token=uuid.uuid4(),
            policy=self.policy,
            sender=Sender(env.user_id, self.groups),
        )
        if decision.events and decision.state is not None:
            self._record(state, decision.state, decision.events)
        return decision.reply

    def _models_for(
        self,
        command: Create | SetStatus | Ping | Cancel,
        state: InstanceState | None,
        latest: dict[str, StatusModel],
    ) -> dict[str, StatusModel]:
        """The models `decide` may need: the latest ones for a create, else the instance's own version."""
        if isinstance(command, Create):
            return latest
        if state is not None:
            return {state.object_name: self.models[(state.object_name, state.model_version)]}
        return {}

    def _record(self, old: InstanceState | None, new: InstanceState, events: list[Event]) -> None:
        """A decision's new state and events, and the notifications they make."""
        moved = old is None or old.next_deadline != new.next_deadline
        if new.next_deadline is not None and moved:
            self.new_deadlines.append(new.next_deadline)
        self.states[new.token] = new
        self.changed[new.token] = new
        self.events.extend(events)
        for event in events:
            if (n := notification_for(event, new)) is not None:
                self.notifications.append(n)

    async def save(self, published: Sequence[int]) -> tuple[datetime | None, list[OutboxRow]]:
        """Write the window and delete the `published` outbox rows.

        Returns the earliest deadline it set (for sweepers) and the rows to publish.
        """
        direct = await self.tx.save(
            list(self.changed.values()),
            self.events,
            self.notifications,
            self.replies,
            direct=self.direct,
            published=published,
        )
        if self.global_events:
            await self.tx.save_global_events(self.global_events)
        # Only deadlines this window set or moved: sweepers already know the others.
        earliest = min(self.new_deadlines) if self.new_deadlines else None
        if earliest is not None:
            self.tx.announce_deadline(earliest)
        return earliest, direct
