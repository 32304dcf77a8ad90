"""Read-only queries: answered concurrently by every replica, never written."""

from __future__ import annotations

import asyncio
import time

import structlog
from aio_pika.abc import AbstractIncomingMessage

from statusek.adapters.postgres.store import Store
from statusek.adapters.rabbitmq.broker import Broker
from statusek.adapters.rabbitmq.parser import parse_delivery
from statusek.app import settle
from statusek.app.metrics import Metrics
from statusek.core.access import Groups, Sender
from statusek.core.codes import Code
from statusek.core.errors import InvalidMessage, StoreFailure, TransientError
from statusek.core.messages import QUERIES, InstanceQuery, StatusQuery
from statusek.core.views import answer

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
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def drain(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _handle(self, delivery: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(
            message_id=delivery.message_id, correlation_id=delivery.correlation_id
        )
        try:
            envelope = parse_delivery(delivery, QUERIES, self._max_body)
            query = envelope.body
            assert isinstance(query, StatusQuery | InstanceQuery)
            structlog.contextvars.bind_contextvars(instance_token=str(query.instance_token))
            state, model, events, now = await self._store.read_instance(
                query.instance_token, with_events=envelope.kind == "get-events"
            )
            sender = Sender(envelope.user_id, self._groups)
            reply = answer(envelope.kind, query, state, model, events, now, sender)
            await settle.answer(self._broker, delivery, reply)
            await delivery.ack()
            self._metrics.queries.labels(routing_key=envelope.kind, code=reply.code).inc()
            log.info(
                "query",
                routing_key=envelope.kind,
                code=reply.code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        except InvalidMessage as e:
            await settle.dead_letter(self._broker, delivery, e)
            await delivery.ack()
            self._metrics.dead_lettered.labels(reason=e.reason).inc()
            self._metrics.queries.labels(
                routing_key=delivery.routing_key or "", code=Code.INVALID_MESSAGE
            ).inc()
            log.warning("dead-lettered", routing_key=delivery.routing_key, reason=e.reason, detail=e.detail)
        except (TransientError, StoreFailure) as e:
            log.warning("query failed, requeued", error=str(e))
            await asyncio.sleep(0.5)
            await settle.requeue_all([delivery])
        finally:
            structlog.contextvars.unbind_contextvars("message_id", "correlation_id", "instance_token")
