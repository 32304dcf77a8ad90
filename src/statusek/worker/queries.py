"""Read-only queries: answered concurrently by every replica, never written."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.postgres.reports import ReportTooSlow, ping_summary, report_inputs
from statusek.adapters.postgres.store import Store
from statusek.adapters.rabbitmq import settle
from statusek.adapters.rabbitmq.broker import Broker
from statusek.adapters.rabbitmq.parser import parse_delivery
from statusek.core.access import Groups, Sender
from statusek.core.codes import Code
from statusek.core.errors import InvalidMessage, StoreFailure, TooLargeForBroker, TransientError
from statusek.core.global_status import global_events_reply
from statusek.core.messages import (
    QUERIES,
    EventsQuery,
    FindInstances,
    GlobalEventsQuery,
    InstanceQuery,
    Reply,
    ReportQuery,
    StatusQuery,
)
from statusek.core.report import report_reply
from statusek.core.views import answer, found_instances
from statusek.worker.metrics import Metrics

log = structlog.get_logger(__name__)


class QueryHandler:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        max_body_bytes: int,
        metrics: Metrics | None = None,
        groups: Groups | None = None,
    ):
        self._store = store
        self._groups: Groups = groups or {}
        self._metrics = metrics or Metrics()
        self._broker = broker
        self._max_body = max_body_bytes
        self._in_flight: set[asyncio.Task[None]] = set()

    async def on_message(self, delivery: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handle(delivery)
        except Exception:
            log.exception("query failed, and so did its answer")
            # Never left unsettled: a query that fails every time would hold a prefetch slot on
            # every replica it reaches, until none answers any query. A lost answer is the
            # sender's timeout; a closed channel has given the delivery back already.
            if not delivery.processed and settle.is_live(delivery):
                with contextlib.suppress(Exception):
                    await settle.ack(delivery)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def drain(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _instance_query(self, kind: str, query: object, user_id: str | None) -> Reply:
        assert isinstance(query, StatusQuery | InstanceQuery)
        structlog.contextvars.bind_contextvars(instance_token=str(query.instance_token))
        page = query if isinstance(query, EventsQuery) else None
        state, model, events, now = await self._store.read_instance(
            query.instance_token,
            with_events=kind == "get-events",
            # One more than the page: it tells that another page follows.
            events_after=page.after_seq if page else 0,
            events_limit=page.limit + 1 if page else None,
        )
        pings = (
            await ping_summary(self._store, query.instance_token, state.last_seq)
            if kind == "get-instance" and state is not None
            else []
        )
        return answer(kind, query, state, model, events, now, Sender(user_id, self._groups), pings)

    async def _report(self, query: ReportQuery) -> Reply:
        inputs = await report_inputs(self._store, query.object_name, query.since, query.until)
        return report_reply(query, inputs.latest, inputs.daily, inputs.live, inputs.slas)

    async def _global_events(self, query: GlobalEventsQuery) -> Reply:
        events = await self._store.read_global_events(query.after_seq, query.limit + 1, query.status_name)
        return global_events_reply(query, events)

    async def _find_instances(self, query: FindInstances) -> Reply:
        states, now = await self._store.find_instances(query)
        return found_instances(query, states, now)

    async def _dead_letter(self, delivery: AbstractIncomingMessage, error: InvalidMessage) -> None:
        await settle.dead_letter(self._broker, delivery, error)
        await settle.ack(delivery)
        self._metrics.dead_lettered.labels(reason=error.reason).inc()
        self._metrics.queries.labels(routing_key=delivery.routing_key or "", code=Code.INVALID_MESSAGE).inc()
        log.warning(
            "dead-lettered", routing_key=delivery.routing_key, reason=error.reason, detail=error.detail
        )

    async def _fail(self, delivery: AbstractIncomingMessage, error: Exception) -> None:
        """An unexpected failure: a copy kept for the operator, INTERNAL_ERROR to the sender.

        `on_message` acks it whatever happens here.
        """
        detail = f"{type(error).__name__}: {error}"
        try:
            await self._broker.park(
                self._broker.names.dead_letter,
                delivery,
                {
                    settle.REASON_HEADER: "internal-error",
                    settle.DETAIL_HEADER: detail[:1024],
                    "x-routing-key": delivery.routing_key or "",
                    "x-exchange": delivery.exchange or "",
                },
            )
        except Exception:
            log.exception("the failed query's copy was not kept")
        if delivery.reply_to:
            await settle.reply_to_sender(
                self._broker,
                delivery,
                Reply.fail(
                    Code.INTERNAL_ERROR,
                    "statusek failed on this query; it is kept in statusek.dead-letter",
                    reason="internal-error",
                ),
            )
        self._metrics.dead_lettered.labels(reason="internal-error").inc()
        self._metrics.queries.labels(routing_key=delivery.routing_key or "", code=Code.INTERNAL_ERROR).inc()

    async def _refuse(self, delivery: AbstractIncomingMessage, kind: str, reason: str, text: str) -> None:
        """A query asking more than statusek answers within its bounds: told so, acked, not kept."""
        if delivery.reply_to:
            await settle.reply_to_sender(
                self._broker, delivery, Reply.fail(Code.INVALID_MESSAGE, text, reason=reason)
            )
        await settle.ack(delivery)
        self._metrics.queries.labels(routing_key=kind, code=Code.INVALID_MESSAGE).inc()
        log.warning("query refused", routing_key=kind, reason=reason)

    async def _handle(self, delivery: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(
            message_id=delivery.message_id, correlation_id=delivery.correlation_id
        )
        settled = False
        try:
            envelope = parse_delivery(delivery, QUERIES, self._max_body)
            query = envelope.body
            if isinstance(query, GlobalEventsQuery):
                reply = await self._global_events(query)
            elif isinstance(query, FindInstances):
                reply = await self._find_instances(query)
            elif isinstance(query, ReportQuery):
                reply = await self._report(query)
            else:
                reply = await self._instance_query(envelope.kind, query, envelope.user_id)
            await settle.answer(self._broker, delivery, reply)
            await settle.ack(delivery)
            settled = True
            self._metrics.queries.labels(routing_key=envelope.kind, code=reply.code).inc()
            log.info(
                "query",
                routing_key=envelope.kind,
                code=reply.code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        except InvalidMessage as e:
            await self._dead_letter(delivery, e)
        except ReportTooSlow as e:
            await self._refuse(delivery, "get-report", "report-timeout", str(e))
        except TooLargeForBroker as e:
            # Asking again gets the same answer, refused again: say so in a reply that fits.
            log.warning("query answer over the broker's message size limit", error=str(e))
            text = (
                f"the answer is {e.size} bytes, over the broker's max_message_size: "
                "ask for less (a smaller limit or a shorter range)"
            )
            await self._refuse(delivery, delivery.routing_key or "", "reply-too-large", text)
        except StoreFailure as e:
            # Postgres refused it: asking again gives the same answer, so keep it, never loop on it.
            log.exception("query cannot be answered")
            await self._dead_letter(delivery, InvalidMessage("store-failure", f"{type(e).__name__}: {e}"))
        except TransientError as e:
            log.warning("query failed, requeued", error=str(e))
            await asyncio.sleep(0.5)
            await settle.requeue_all([delivery])
        except Exception as e:
            if settled:
                # Answered and acked; only what follows (metrics, the log line) failed.
                log.exception("query answered, bookkeeping failed")
            else:
                log.exception("query failed")
                await self._fail(delivery, e)
        finally:
            structlog.contextvars.unbind_contextvars("message_id", "correlation_id", "instance_token")
