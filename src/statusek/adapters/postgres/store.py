"""The Postgres store: instances, the event log, model versions, outbox, idempotency.

Every method works on many instances at once, because the pipeline handles a
window of deliveries in one transaction. asyncpg errors never leave this
module untranslated (see `errors.translated`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from statusek.adapters.postgres.connect import ConnectOptions, connect
from statusek.adapters.postgres.errors import translated
from statusek.core.codes import FinishReason
from statusek.core.errors import StoreFailure
from statusek.core.global_status import GlobalEvent
from statusek.core.instance import Event, EventKind, InstanceState
from statusek.core.messages import FindInstances, Reply, decode_cursor
from statusek.core.model import StatusModel, StatusType, parse_model
from statusek.core.views import Notification

log = structlog.get_logger(__name__)

OUTBOX_CHANNEL = "statusek_outbox"
DEADLINE_CHANNEL = "statusek_deadline"
PARTITION_FENCE = 0x5354_5046  # arbitrary int4, the lock space of command partitions' windows
# A transaction's statements take the same shape whatever their arrays hold, but Postgres plans
# one again at every call while a custom plan (costed for the arrays at hand) looks cheaper than
# the generic one (costed for 100 elements of each unnest): a window of one command spent more
# time planning its save (`WINDOW_INSERT`) than running it. Large windows got the generic plan
# already; now every window does.
GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"
_UNFENCED = "this needs a transaction under a partition fence: Store.transaction(fence=...)"
_INSTANCE_COLUMNS = (
    "token, object_name, model_version, labels, create_args, created_at, instance_deadline,"
    " heartbeat_timeout, heartbeat_deadline, statuses, last_seq, finished_at, finish_reason"
)


async def _init_connection(conn: asyncpg.Connection, options: ConnectOptions | None = None) -> None:
    if options is not None:
        options.keep_alive(conn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# True while a connection goes back to the pool from a committed `Store.transaction`: it holds no
# session state, and skipping asyncpg's reset query saves a round trip per window. Read by `_reset`,
# which the pool calls in the releasing task's context (or a copy of it).
_CLEAN_RELEASE: ContextVar[bool] = ContextVar("statusek_clean_release", default=False)


async def _reset(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection (after asyncpg rolled back any open transaction)."""
    if _CLEAN_RELEASE.get():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


def _literal(text: str) -> str:
    """A SQL string literal, whatever standard_conforming_strings says (an escape string)."""
    if "\x00" in text:
        raise ValueError("a SQL literal cannot hold NUL")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _state(row: Mapping[str, Any]) -> InstanceState:
    return InstanceState(
        token=row["token"],
        object_name=row["object_name"],
        model_version=row["model_version"],
        labels=row["labels"],
        create_args=row["create_args"],
        created_at=row["created_at"],
        instance_deadline=row["instance_deadline"],
        heartbeat_timeout=row["heartbeat_timeout"],
        heartbeat_deadline=row["heartbeat_deadline"],
        statuses=tuple(row["statuses"]),
        last_seq=row["last_seq"],
        finished_at=row["finished_at"],
        finish_reason=FinishReason(row["finish_reason"]) if row["finish_reason"] else None,
    )


def _event(row: Mapping[str, Any]) -> Event:
    return Event(
        instance_token=row["instance_token"],
        seq=row["seq"],
        kind=EventKind(row["kind"]),
        occurred_at=row["occurred_at"],
        status_name=row["status_name"],
        status_type=StatusType(row["status_type"]) if row["status_type"] else None,
        message=row["message"],
        code=row["code"],
        reason=FinishReason(row["reason"]) if row["reason"] else None,
        actor=row["actor"],
    )


@dataclass(frozen=True, slots=True)
class Backlog:
    """Work committed but not yet done, for metrics and alerts."""

    outbox_rows: int
    outbox_oldest_age: float  # seconds; 0 when the outbox is empty
    sweeper_lag: float  # seconds past the oldest deadline not yet finished; 0 when none is overdue


# A recorded reply's key: the sender (AMQP user_id, '' when none) and the command's message_id.
ReplyKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class GivenReply:
    """A reply recorded for a message_id, with the fingerprint of the command it answered."""

    fingerprint: str | None  # None: recorded before fingerprints were kept
    reply: Reply


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    notification: Notification
    # Written for its pipeline to publish itself (`direct`) less than the relay's grace ago: in flight.
    in_flight: bool = False


LOCK_OVERDUE = (
    f"SELECT {_INSTANCE_COLUMNS} FROM instances"
    " WHERE next_deadline <= $1"
    " ORDER BY next_deadline LIMIT $2 FOR UPDATE SKIP LOCKED"
)


class Transaction:
    """One unit of work; everything written through it commits or rolls back together."""

    def __init__(self, conn: asyncpg.Connection, store: Store, *, fenced: bool = False):
        self._conn = conn
        self._store = store
        self._fenced = fenced
        # pg_notify calls, sent with the COMMIT (`commit_statement`): they are delivered on commit anyway.
        self._notifications: list[tuple[str, str]] = []

    def notify(self, channel: str, payload: str = "") -> None:
        """NOTIFY `channel` when this transaction commits, without a round trip of its own."""
        self._notifications.append((channel, payload))

    def commit_statement(self) -> str:
        """The COMMIT, after this transaction's notifications: one simple query, one round trip."""
        notifies = "".join(
            f"SELECT pg_notify({_literal(c)}, {_literal(p)}); " for c, p in self._notifications
        )
        return notifies + "COMMIT"

    async def now(self) -> datetime:
        """The database clock, read now (not at transaction start): the one clock."""
        async with translated():
            value: datetime = await self._conn.fetchval("SELECT clock_timestamp()")
        return value

    async def lock_window(
        self, tokens: Iterable[UUID], keys: Iterable[ReplyKey], object_names: Iterable[str] = ()
    ) -> tuple[dict[UUID, InstanceState], dict[ReplyKey, GivenReply], dict[str, int], datetime]:
        """Load and lock a window's instances, read the replies already given, and the clock after.

        Also the latest model version of each of `object_names` (the creates' models). One round
        trip. Only under the partition's fence (`Store.transaction(fence=...)`): the
        replies are read in the snapshot the statement starts with, before it waits for any
        instance lock, and only the fence keeps another window of these commands from committing
        replies meanwhile. Locking in token order keeps replicas deadlock-free. The clock is read
        once every lock is held, so a reader that saw an instance unlocked (queries) read it
        before this window's clock: a deadline it saw pass has passed for this window too.
        """
        if not self._fenced:
            raise RuntimeError(_UNFENCED)
        wanted, asked = sorted(set(tokens)), sorted(set(keys))
        async with translated():
            rows = await self._conn.fetch(
                LOCK_WINDOW,
                wanted,
                [k[0] for k in asked],
                [k[1] for k in asked],
                sorted(set(object_names)),
            )
        states = {row["token"]: _state(row) for row in rows if row["token"] is not None}
        given = {
            (sender, mid): GivenReply(fingerprint, Reply.model_validate(reply))
            for sender, mid, fingerprint, reply in rows[0]["replies"]
        }
        return states, given, rows[0]["latest"], rows[0]["now"]

    async def lock_global_log(self) -> int:
        """Lock the log of global statuses until commit; returns its last seq.

        Taken after the window's instances, always in that order, so windows cannot deadlock.
        """
        async with translated():
            value: int = await self._conn.fetchval(
                "SELECT last_seq FROM global_event_counter WHERE only_row FOR UPDATE"
            )
        return value

    async def save_global_events(self, events: Sequence[GlobalEvent]) -> None:
        """Append global events (their seqs follow `lock_global_log`'s) and advance the log."""
        async with translated():
            await self._conn.executemany(
                "INSERT INTO global_events (seq, status_name, message, occurred_at, actor)"
                " VALUES ($1, $2, $3, $4, $5)",
                [(e.seq, e.status_name, e.message, e.occurred_at, e.actor) for e in events],
            )
            await self._conn.execute(
                "UPDATE global_event_counter SET last_seq = $1 WHERE only_row", max(e.seq for e in events)
            )

    async def lock_overdue(self, limit: int) -> dict[UUID, InstanceState]:
        """Open instances past their deadline that no other sweeper holds.

        The bound is the clock read before the statement, passed as a parameter: a volatile
        `clock_timestamp()` in the WHERE clause is no index condition, and the scan then filters
        every open instance with a deadline whenever fewer than `limit` are overdue. Read first,
        the bound is never later than the clock at lock time, so no row is taken early.
        """
        async with translated():
            bound = await self._conn.fetchval("SELECT clock_timestamp()")
            rows = await self._conn.fetch(LOCK_OVERDUE, bound, limit)
        return {row["token"]: _state(row) for row in rows}

    async def models(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], StatusModel]:
        """Model versions by (name, version); versions never change, so they are cached."""
        cache = self._store.model_cache
        wanted = set(keys)
        missing = [k for k in wanted if k not in cache]
        if missing:
            async with translated():
                rows = await self._conn.fetch(
                    "SELECT m.object_name, m.version, m.definition FROM model_versions m"
                    " JOIN unnest($1::text[], $2::int[]) AS k(name, version)"
                    " ON m.object_name = k.name AND m.version = k.version",
                    [k[0] for k in missing],
                    [k[1] for k in missing],
                )
            for r in rows:
                model = parse_model(r["definition"], source="model_versions", version=r["version"])
                cache[(r["object_name"], r["version"])] = model
        return {k: cache[k] for k in wanted if k in cache}

    async def save(
        self,
        states: Sequence[InstanceState],
        events: Sequence[Event],
        notifications: Sequence[Notification],
        replies: Mapping[ReplyKey, GivenReply],
        *,
        direct: bool = False,
        published: Sequence[int] = (),
    ) -> list[OutboxRow]:
        """Write the outcome of a window of commands in one statement.

        With `direct`, returns the outbox rows the caller is to publish itself after commit:
        those of instances with no notification already waiting in the outbox. The others (and
        global statuses' notifications) are left to the relays, which are woken on commit
        (`OUTBOX_CHANNEL`) only when there are such rows. The `published` outbox rows (sent and
        confirmed by the caller) are deleted by the same statement, and do not hold an
        instance's new rows back.
        """
        if not (states or events or notifications or replies or published):
            return []
        async with translated():
            # One round trip for the whole window.
            inserted = await self._conn.fetch(
                WINDOW_INSERT,
                *_window_arguments(states, events, notifications, replies, direct, published),
            )
            direct_rows = _direct_rows(notifications, inserted)
            if len(direct_rows) < len(notifications):
                self.notify(OUTBOX_CHANNEL)
        return direct_rows

    def announce_deadline(self, deadline: datetime) -> None:
        """Wake sweepers that sleep past `deadline` (sent with the commit)."""
        self.notify(DEADLINE_CHANNEL, deadline.isoformat())

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        async with translated():
            await self._conn.execute(OUTBOX_DELETE, list(ids))


def _window_arguments(
    states: Sequence[InstanceState],
    events: Sequence[Event],
    notifications: Sequence[Notification],
    replies: Mapping[ReplyKey, GivenReply],
    direct: bool,
    published: Sequence[int],
) -> list[object]:
    """WINDOW_INSERT's parameters, $1 to $36: a column (a list, for unnest) per field of each row kind."""
    types, tokens, bodies, headers, parts, message_ids = _columns(map(_outbox_row, notifications), 6)
    senders, reply_ids, fingerprints, reply_bodies = _columns(map(_reply_row, replies.items()), 4)
    return [
        *(types, tokens, bodies, headers, parts, direct, message_ids),  # $1-$7
        *_columns(map(_event_row, events), 10),  # $8-$17
        *(reply_ids, reply_bodies, list(published)),  # $18-$20
        *_columns(map(_state_row, states), 14),  # $21-$34
        *(senders, fingerprints),  # $35-$36
    ]


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows turned into their `width` columns, each a list (empty when there are no rows)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    return columns or [[] for _ in range(width)]


def _outbox_row(n: Notification) -> tuple[Any, ...]:
    """OUTBOX_INSERT's fields of a notification: type, token, body, headers, partition, message_id."""
    return (
        n.type,
        n.instance_token,
        json.dumps(n.body),
        json.dumps(n.headers),
        outbox_partition(n.instance_token),
        n.message_id,
    )


def _event_row(e: Event) -> tuple[Any, ...]:
    """The events table's columns of an event, in WINDOW_INSERT's order."""
    return (
        e.instance_token,
        e.seq,
        e.kind.value,
        e.occurred_at,
        e.status_name,
        e.status_type.value if e.status_type else None,
        e.message,
        e.code,
        e.reason.value if e.reason else None,
        e.actor,
    )


def _reply_row(item: tuple[ReplyKey, GivenReply]) -> tuple[Any, ...]:
    """A recorded reply's fields: sender, message_id, fingerprint, reply."""
    (sender, message_id), given = item
    return sender, message_id, given.fingerprint, given.reply.model_dump_json()


def _state_row(s: InstanceState) -> tuple[Any, ...]:
    """The instances table's columns of a state, in WINDOW_INSERT's order."""
    return (
        s.token,
        s.object_name,
        s.model_version,
        json.dumps(s.labels),
        json.dumps(s.create_args),
        s.created_at,
        s.instance_deadline,
        s.heartbeat_timeout,
        s.heartbeat_deadline,
        s.next_deadline,
        json.dumps(list(s.statuses)),
        s.last_seq,
        s.finished_at,
        s.finish_reason.value if s.finish_reason else None,
    )


def _direct_rows(
    notifications: Sequence[Notification], inserted: Sequence[Mapping[str, Any]]
) -> list[OutboxRow]:
    """The outbox rows marked `direct`, in the window's order (RETURNING's order is not relied on)."""
    marked = {r["message_id"]: (r["id"], r["direct"]) for r in inserted}
    return [OutboxRow(marked[n.message_id][0], n) for n in notifications if marked[n.message_id][1]]


# A window's instances, locked, beside the replies of its message ids (always one row, with
# NULL instance columns when none is locked).
LOCK_WINDOW = (
    f"WITH locked AS MATERIALIZED (SELECT {_INSTANCE_COLUMNS} FROM instances"
    "  WHERE token = ANY($1::uuid[]) ORDER BY token FOR UPDATE),"
    " given AS (SELECT coalesce(jsonb_agg(jsonb_build_array(p.sender, p.message_id, p.fingerprint,"
    "   p.reply)), '[]'::jsonb) AS replies"
    "  FROM processed_messages p JOIN unnest($2::text[], $3::text[]) AS k(sender, message_id)"
    "   ON p.sender = k.sender AND p.message_id = k.message_id),"
    # Aggregating over every locked row first: the clock is read once they are all held.
    " clock AS (SELECT clock_timestamp() AS now FROM (SELECT count(*) FROM locked) AS held),"
    " latest AS (SELECT coalesce(jsonb_object_agg(object_name, version), '{}'::jsonb) AS latest"
    "  FROM (SELECT DISTINCT ON (object_name) object_name, version FROM model_versions"
    "   WHERE object_name = ANY($4::text[]) ORDER BY object_name, version DESC) AS l)"
    " SELECT clock.now, given.replies, latest.latest, locked.*"
    " FROM clock CROSS JOIN given CROSS JOIN latest LEFT JOIN locked ON true"
)
# A window's notifications in one statement. `direct` (the pipeline publishes them itself) only for
# an instance with no row already waiting: an earlier notification still in the outbox (its
# publisher crashed or failed) must leave first, through the relay. Rows being deleted as
# published ($20, see WINDOW_INSERT) do not count. The rows of one statement do
# not see each other, so all of an instance's rows of a window get the same mark. created_at is
# the time of writing (not of the transaction's start): the relay's grace counts from it.
OUTBOX_INSERT = (
    "INSERT INTO outbox (message_id, type, instance_token, body, headers, partition, direct, created_at)"
    " SELECT u.message_id, u.type, u.token, u.body::jsonb, u.headers::jsonb, u.part,"
    "  $6 AND u.token IS NOT NULL AND NOT EXISTS"
    "   (SELECT 1 FROM outbox o WHERE o.instance_token = u.token AND o.id <> ALL($20::bigint[])),"
    "  clock_timestamp()"
    " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::smallint[], $7::text[])"
    "  WITH ORDINALITY AS u(type, token, body, headers, part, message_id, ord)"
    " ORDER BY u.ord RETURNING id, direct, message_id"
)
# OUTBOX_INSERT with the window's instances, events and replies written beside it
# (data-modifying CTEs always run, returned from or not; the events' foreign key is checked at
# the end of the statement, when the instances are there).
WINDOW_INSERT = (
    "WITH instances_written AS (INSERT INTO instances (token, object_name, model_version, labels,"
    "  create_args, created_at, instance_deadline, heartbeat_timeout, heartbeat_deadline,"
    "  next_deadline, statuses, last_seq, finished_at, finish_reason)"
    "  SELECT t, o, v, l::jsonb, c::jsonb, ca, idl, ht, hd, nd,"
    "   ARRAY(SELECT e FROM jsonb_array_elements_text(st::jsonb) WITH ORDINALITY AS a(e, i) ORDER BY i),"
    "   ls, fa, fr"
    "  FROM unnest($21::uuid[], $22::text[], $23::int[], $24::text[], $25::text[], $26::timestamptz[],"
    "   $27::timestamptz[], $28::float8[], $29::timestamptz[], $30::timestamptz[], $31::text[],"
    "   $32::int[], $33::timestamptz[], $34::text[])"
    "   AS u(t, o, v, l, c, ca, idl, ht, hd, nd, st, ls, fa, fr)"
    "  ON CONFLICT (token) DO UPDATE SET heartbeat_deadline = excluded.heartbeat_deadline,"
    "   next_deadline = excluded.next_deadline, statuses = excluded.statuses,"
    "   last_seq = excluded.last_seq, finished_at = excluded.finished_at,"
    "   finish_reason = excluded.finish_reason),"
    " events_written AS (INSERT INTO events (instance_token, seq, kind, occurred_at, status_name,"
    "  status_type, message, code, reason, actor)"
    "  SELECT * FROM unnest($8::uuid[], $9::int[], $10::text[], $11::timestamptz[], $12::text[],"
    "   $13::text[], $14::text[], $15::int[], $16::text[], $17::text[])),"
    " replies_written AS (INSERT INTO processed_messages (sender, message_id, fingerprint, reply)"
    "  SELECT s, m, f, r::jsonb FROM unnest($35::text[], $18::text[], $36::text[], $19::text[])"
    "   AS u(s, m, f, r)"
    "  ON CONFLICT (sender, message_id) DO NOTHING),"
    " published_deleted AS (DELETE FROM outbox WHERE id = ANY($20::bigint[])) " + OUTBOX_INSERT
)
# After the partition's lock, in a statement of its own: its snapshot must come after the lock, so
# that rows another relay deleted before letting go of it are not read again.
OUTBOX_TAKE = (
    "SELECT id, message_id, type, instance_token, body, headers,"
    " direct AND created_at > clock_timestamp() - make_interval(secs => $4) AS in_flight"
    " FROM outbox WHERE partition = $1 AND id > $2 ORDER BY id LIMIT $3"
)
# Partitions holding a row a relay may send now (not in flight): one round trip, no lock.
OUTBOX_WAITING = (
    "SELECT p FROM generate_series(0, $1 - 1) AS p WHERE EXISTS (SELECT 1 FROM outbox"
    " WHERE partition = p AND NOT (direct AND created_at > clock_timestamp() - make_interval(secs => $2)))"
)
OUTBOX_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
# Direct rows whose publishing failed: the relay takes them at once, in order.
OUTBOX_UNDIRECT = "UPDATE outbox SET direct = false WHERE id = ANY($1::bigint[])"

RELAY_LOCK = 0x5354_4F42  # arbitrary int4, shared by every replica's relay
# Fixed: changing it while rows wait could split an instance across partitions.
OUTBOX_PARTITIONS = 8


def outbox_partition(instance_token: str | None) -> int:
    """Every notification of an instance lands in the same partition; global ones in partition 0."""
    return UUID(instance_token).int % OUTBOX_PARTITIONS if instance_token else 0


class Store:
    """A pool of connections and the operations statusek needs from Postgres."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, options: ConnectOptions | None = None):
        self._pool = pool
        self._dsn = dsn
        self._options = options or ConnectOptions()
        self.model_cache: dict[tuple[str, int], StatusModel] = {}

    @classmethod
    async def open(
        cls, dsn: str, *, min_size: int = 2, max_size: int = 10, options: ConnectOptions | None = None
    ) -> Store:
        """A pool whose every connection attempt, statement and transaction is bounded (`ConnectOptions`).

        A statement that legitimately waits longer sets its own `SET LOCAL statement_timeout`.
        """
        options = options or ConnectOptions()

        async def init(conn: asyncpg.Connection) -> None:
            await _init_connection(conn, options)

        async with translated():
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, init=init, reset=_reset, **options.connect_kwargs()
            )
        return cls(pool, dsn, options)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool; connections still in use after `timeout` are cut (their transactions roll back).

        asyncpg's close waits for every connection to come back, and a task stuck holding one
        would keep a stopping worker from ever exiting.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._pool.close()
        except TimeoutError:
            log.warning("database connections still in use at close: cut", timeout=timeout)
            self._pool.terminate()

    @asynccontextmanager
    async def transaction(self, *, fence: int | None = None) -> AsyncIterator[Transaction]:
        """A transaction; with `fence`, it first waits for any other transaction holding that fence.

        A command partition's windows take its fence: a window still committing after its
        channel closed (a hand-over that timed out, a lost connection) and the window of the
        same redelivered commands on another replica then run one after the other, and the
        second finds the first's replies, instead of both creating the same instance.

        One round trip opens it (BEGIN, `GENERIC_PLANS` and the fence's lock in one simple query) and one
        commits it (with its notifications, `Transaction.notify`); the connection then goes back to
        the pool without asyncpg's reset query (`_reset`), since a transaction leaves no session
        state: only transaction-scoped locks and `SET LOCAL`s, which end with it.
        """
        begin = f"BEGIN; {GENERIC_PLANS}"
        if fence is not None:
            # Integers only: the lock's keys can be part of the simple query's text.
            begin += f"; SELECT pg_advisory_xact_lock({int(PARTITION_FENCE)}, {int(fence)})"
        clean = _CLEAN_RELEASE.set(False)
        try:
            async with translated(), self._pool.acquire() as conn:
                tx = Transaction(conn, self, fenced=fence is not None)
                try:
                    await conn.execute(begin)
                    yield tx
                    status = await conn.execute(tx.commit_statement())
                except BaseException:
                    if not conn.is_closed():
                        with contextlib.suppress(Exception):
                            await conn.execute("ROLLBACK")
                    raise
                if status != "COMMIT":
                    # Postgres answers a COMMIT of a failed transaction with ROLLBACK, and no error.
                    raise StoreFailure(
                        f"postgres rolled the transaction back instead of committing ({status})"
                    )
                _CLEAN_RELEASE.set(True)
        finally:
            _CLEAN_RELEASE.reset(clean)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool, errors translated, for the modules beside this one (retention)."""
        async with translated(), self._pool.acquire() as conn:
            yield conn

    async def earliest_deadline(self) -> datetime | None:
        async with translated():
            value: datetime | None = await self._pool.fetchval(
                "SELECT min(next_deadline) FROM instances WHERE next_deadline IS NOT NULL"
            )
        return value

    async def now(self) -> datetime:
        async with translated():
            value: datetime = await self._pool.fetchval("SELECT clock_timestamp()")
        return value

    async def ping(self) -> None:
        """Raise unless the database answers a query through the pool."""
        async with translated():
            await self._pool.fetchval("SELECT 1")

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        """Remove rows their own pipeline published: one round trip, without waiting for the disk.

        The commit does not wait for its WAL flush (synchronous_commit off for it alone): a
        database crash may undo the delete, and the relay then sends those notifications again,
        at least once as ever. No later commit can outlive it (the WAL is written in order), so
        an instance's later notifications never go out before them.
        """
        listed = ",".join(str(int(i)) for i in ids)  # integers: a simple query, so two statements
        async with translated():
            await self._pool.execute(
                "SELECT set_config('synchronous_commit', 'off', true);"
                f" DELETE FROM outbox WHERE id = ANY('{{{listed}}}'::bigint[])"
            )

    async def undirect_outbox(self, ids: Sequence[int]) -> None:
        """Hand rows whose direct publishing failed to the relays at once (they need not wait the grace)."""
        async with translated():
            await self._pool.execute(OUTBOX_UNDIRECT, list(ids))

    async def waiting_partitions(self, grace: float) -> list[int]:
        """The outbox partitions holding a row a relay may send now, in one round trip."""
        async with translated():
            rows = await self._pool.fetch(OUTBOX_WAITING, OUTBOX_PARTITIONS, grace)
        return [r["p"] for r in rows]

    async def backlog(self) -> Backlog:
        # The outbox holds a few rows while the relay keeps up, and the deadline
        # minimum is a lookup in the partial index of open instances.
        async with translated():
            row = await self._pool.fetchrow(
                "SELECT (SELECT count(*) FROM outbox) AS rows,"
                " (SELECT extract(epoch FROM clock_timestamp() - min(created_at)) FROM outbox) AS oldest,"
                " (SELECT extract(epoch FROM clock_timestamp() - min(next_deadline)) FROM instances"
                "  WHERE next_deadline IS NOT NULL) AS lag"
            )
        return Backlog(
            outbox_rows=int(row["rows"]),
            outbox_oldest_age=max(0.0, float(row["oldest"] or 0)),
            sweeper_lag=max(0.0, float(row["lag"] or 0)),
        )

    async def read_instance(
        self, token: UUID, *, with_events: bool, events_after: int = 0, events_limit: int | None = None
    ) -> tuple[InstanceState | None, StatusModel | None, list[Event], datetime]:
        """A consistent read for queries: the instance, its model, its events and `now`.

        Only the events with a seq above `events_after` are read, at most `events_limit` of them.
        The instance and its events come from one snapshot (REPEATABLE READ): a sweeper's commit
        between them cannot show a finish twice. An open instance past a deadline, which a query
        calls finished, is read again once no window holds it (`FOR KEY SHARE` waits for a
        window's `FOR UPDATE`), with the clock read after that: a window that read its clock
        before the deadline (a ping that moves it) has committed by then, and any later window
        reads a later clock, sees the deadline passed too and finishes the instance as `expire`
        does. So a finish a query names is, or will be, in the log.
        """

        async def read(
            conn: asyncpg.Connection, lock: bool
        ) -> tuple[InstanceState | None, list[Event], datetime]:
            if lock:
                row = await conn.fetchrow(
                    f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE token = $1 FOR KEY SHARE", token
                )
                now: datetime = await conn.fetchval("SELECT clock_timestamp()")
            else:
                row = await conn.fetchrow(
                    f"SELECT clock_timestamp() AS now, {_INSTANCE_COLUMNS}"
                    " FROM (VALUES (1)) AS one LEFT JOIN instances ON token = $1",
                    token,
                )
                assert row is not None
                now = row["now"]
                if row["token"] is None:
                    row = None
            if row is None:
                return None, [], now
            events = (
                [
                    _event(r)
                    for r in await conn.fetch(
                        "SELECT * FROM events WHERE instance_token = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                        token,
                        events_after,
                        events_limit,
                    )
                ]
                if with_events
                else []
            )
            return _state(row), events, now

        async with translated(), self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state, events, now = await read(conn, lock=False)
            if state is not None and state.overdue(now) is not None:
                # Read committed: the locking read returns the row as the window left it. While
                # the lock is held nothing writes the instance or its events (every writer locks
                # the row FOR UPDATE first), so the statements after it agree with it.
                async with conn.transaction():
                    state, events, now = await read(conn, lock=True)
            if state is None:
                return None, None, [], now
            key = (state.object_name, state.model_version)
            model = (await Transaction(conn, self).models([key])).get(key)
        return state, model, events, now

    async def read_global_events(
        self, after_seq: int, limit: int, status_name: str | None = None
    ) -> list[GlobalEvent]:
        """Up to `limit` global events with a seq above `after_seq` (of `status_name` only, if given)."""
        named = " AND status_name = $3" if status_name is not None else ""
        args: list[object] = [after_seq, limit] + ([status_name] if status_name is not None else [])
        async with translated():
            rows = await self._pool.fetch(
                "SELECT seq, status_name, message, occurred_at, actor FROM global_events"
                f" WHERE seq > $1{named} ORDER BY seq LIMIT $2",
                *args,
            )
        return [
            GlobalEvent(r["seq"], r["status_name"], r["occurred_at"], r["message"], r["actor"]) for r in rows
        ]

    async def find_instances(self, query: FindInstances) -> tuple[list[InstanceState], datetime]:
        """Instances matching `query`'s filters after its cursor, in (created_at, token) order, and `now`.

        Reads up to `query.limit + 1` rows: the last tells that another page follows. An instance
        past its deadline counts as finished (with TIMEOUT or HEARTBEAT_TIMEOUT) even before a
        sweeper wrote it, as every query sees it. As in `read_instance`, a page holding such an
        instance is read again once no window holds it (`FOR KEY SHARE`), with the clock read
        after, so that the finish it shows is, or will be, in the log. (With `finished: false`,
        an instance a window is pinging just past its deadline may be left out of the page.)
        """
        async with self.transaction() as tx, translated():
            conn = tx._conn
            # Plan each page for its values: a generic plan (what a prepared statement gets after
            # five runs) cannot tell an object of 89 instances from one of 300,000.
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            now = await tx.now()
            states = [_state(r) for r in await conn.fetch(*find_instances_sql(query, now))]
            held: set[UUID] = set()
            # Each round locks what fell due since the last: a few at most, and rarely any.
            for _ in range(_FIND_LOCK_ROUNDS):
                due = sorted({s.token for s in states if s.overdue(now) is not None} - held)
                if not due:
                    break
                await conn.execute(
                    "SELECT FROM instances WHERE token = ANY($1::uuid[]) ORDER BY token FOR KEY SHARE", due
                )
                held.update(due)
                now = await tx.now()
                states = [_state(r) for r in await conn.fetch(*find_instances_sql(query, now))]
        return states, now

    async def sync_models(self, models: Sequence[StatusModel]) -> dict[str, int]:
        """Store each model as a new version unless its latest version is identical.

        Returns the version in force per object name. Serialised with an
        advisory lock so replicas starting together agree on version numbers.
        """
        versions: dict[str, int] = {}
        async with self.transaction() as tx, translated():
            conn = tx._conn
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MODELS_LOCK)
            for model in models:
                latest = await conn.fetchrow(
                    "SELECT version, digest FROM model_versions WHERE object_name = $1"
                    " ORDER BY version DESC LIMIT 1",
                    model.object_name,
                )
                if latest and latest["digest"] == model.digest():
                    versions[model.object_name] = latest["version"]
                    continue
                version = (latest["version"] if latest else 0) + 1
                await conn.execute(
                    "INSERT INTO model_versions (object_name, version, digest, definition)"
                    " VALUES ($1, $2, $3, $4)",
                    model.object_name,
                    version,
                    model.digest(),
                    model.definition(),
                )
                versions[model.object_name] = version
        return versions

    async def expire_processed(
        self, older_than_seconds: float, *, batch: int = 5000, pause: float = 0.05
    ) -> int:
        """Delete idempotency records older than the window; returns how many this replica deleted.

        One replica at a time: a session advisory lock held for the whole pass (released with the
        connection if this process dies); a replica that finds it taken returns 0, the holder is
        doing the same work. Each batch is a statement of its own, so a week of records is never
        one long transaction holding row locks and WAL, and commands keep their turn between them.
        The cutoff is fixed at the start, so a pass ends even while records keep expiring.
        """
        removed = 0
        async with translated(), self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", EXPIRY_LOCK):
                return 0
            try:
                cutoff = await conn.fetchval(
                    "SELECT clock_timestamp() - make_interval(secs => $1)", older_than_seconds
                )
                while True:
                    result: str = await conn.execute(EXPIRE_PROCESSED_BATCH, cutoff, batch)
                    deleted = int(result.split()[-1])
                    removed += deleted
                    if deleted < batch:
                        return removed
                    await asyncio.sleep(pause)
            finally:
                # A connection that broke released the lock with its session; asyncpg's reset on
                # release unlocks too (pg_advisory_unlock_all), should this statement fail.
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", EXPIRY_LOCK)

    async def listen_forever(
        self,
        channels: Sequence[str],
        callback: Callable[[str, str], None],
        on_connected: Callable[[], None],
        *,
        check_every: float = 5.0,
        retry_cap: float = 5.0,
    ) -> None:
        """LISTEN on a dedicated connection, reconnecting whenever it is lost.

        `on_connected` runs after each (re)connection, because notifications
        sent while disconnected are gone and whoever relies on them must look.
        """
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn, self._options)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())

                def forward(_conn: object, _pid: int, channel: str, payload: str) -> None:
                    callback(channel, payload)

                for channel in channels:
                    await conn.add_listener(channel, forward)
                on_connected()
                delay = 0.1
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(check_every):
                            await lost.wait()
                    except TimeoutError:
                        # A silently dead peer never terminates the connection: ask.
                        async with asyncio.timeout(check_every):
                            await conn.execute("SELECT 1")
            except (*_LISTEN_ERRORS,) as e:
                log.warning("notification listener lost, reconnecting", error=f"{type(e).__name__}: {e}")
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(retry_cap, delay * 2)


# Rounds of locking a find-instances page's overdue rows before it answers with what it has.
_FIND_LOCK_ROUNDS = 3


def find_instances_sql(query: FindInstances, now: datetime) -> tuple[str, *tuple[object, ...]]:
    """The SELECT of `find_instances` and its arguments; `now` judges which deadlines have passed.

    Each filter is a condition the indexes of migration 005 serve: (created_at, token) for the
    order and the cursor, with object_name in front for an object, partial on open instances,
    GIN (jsonb_path_ops) on labels for each `labels @> $n`.
    """
    args: list[object] = []
    placed: dict[str, str] = {}

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    def at_now() -> str:  # one parameter for `now`, only when a condition needs it
        if "now" not in placed:
            placed["now"] = arg(now)
        return placed["now"]

    where = []
    if query.object_name is not None:
        where.append(f"object_name = {arg(query.object_name)}")
    # One containment per label: Postgres estimates each from the column's statistics, but a
    # containment of several keys at a fixed guess, which can lead it to sort every match.
    where += [f"labels @> {arg({key: value})}::jsonb" for key, value in sorted(query.labels.items())]
    if query.finished is True:
        # Past a deadline counts as finished: open (next_deadline is NULL once finished) and overdue.
        where.append(f"(finished_at IS NOT NULL OR next_deadline <= {at_now()})")
    elif query.finished is False:
        where.append(f"finished_at IS NULL AND (next_deadline IS NULL OR next_deadline > {at_now()})")
    reason = query.finish_reason
    if reason is not None:
        recorded = f"finish_reason = {arg(reason.value)}"
        if reason in (FinishReason.TIMEOUT, FinishReason.HEARTBEAT_TIMEOUT):
            # Or overdue and not swept yet: by its earlier deadline, TIMEOUT on a tie (InstanceState.overdue).
            by = "=" if reason is FinishReason.TIMEOUT else "IS DISTINCT FROM"
            overdue = f"next_deadline <= {at_now()} AND next_deadline {by} instance_deadline"
            where.append(f"({recorded} OR ({overdue}))")
        else:
            where.append(recorded)
    if query.created_after is not None:
        where.append(f"created_at >= {arg(query.created_after)}")
    if query.created_before is not None:
        where.append(f"created_at < {arg(query.created_before)}")
    if query.after is not None:
        created_at, token = decode_cursor(query.after)
        where.append(f"(created_at, token) > ({arg(created_at)}, {arg(token)})")
    sql = (
        f"SELECT {_INSTANCE_COLUMNS} FROM instances"
        f" WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY created_at, token LIMIT {arg(query.limit + 1)}"
    )
    return (sql, *args)


_LISTEN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a FATAL seen before its close: the link is dead (errors.py)
)


MODELS_LOCK = 0x5354_4154_5553_4D4F  # arbitrary, shared by every replica
EXPIRY_LOCK = 0x5354_5052_4F43_4558  # arbitrary, held by the one replica expiring idempotency records
# By ctid, not by key: the key of processed_messages is not this function's business.
EXPIRE_PROCESSED_BATCH = (
    "DELETE FROM processed_messages WHERE processed_at < $1 AND ctid = ANY(ARRAY("
    "SELECT ctid FROM processed_messages WHERE processed_at < $1 LIMIT $2))"
)
