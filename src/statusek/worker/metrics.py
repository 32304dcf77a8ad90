"""Prometheus metrics of one worker, on a registry of its own.

A registry per worker (rather than the process-global one) lets tests run
several workers in one process and read each one's figures.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, generate_latest

from statusek.identity import version

__all__ = ["METRIC_NAMES", "WINDOW_STAGES", "Metrics"]

DEAD_LETTER_REASONS = (
    "invalid-json",
    "schema-violation",
    "unknown-routing-key",
    "too-large",
    "store-failure",
    "internal-error",
    "delivery-limit",
)

# Latencies of a window are milliseconds when idle and grow with queueing.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WINDOW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Where a command's time goes, in the order it passes: waiting in the worker for its window, the
# window's transaction, its replies and notifications confirmed, its acks (`CommandPipeline.process`).
WINDOW_STAGES = ("queued", "apply", "answer", "ack")
_STAGE_BUCKETS = (0.0005, *_LATENCY_BUCKETS)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # python_gc_* (collections and objects collected per generation): see event_loop.collect_less.
        GCCollector(registry=r)
        self.commands = Counter(
            "statusek_commands",
            "Commands answered, by routing key and reply code.",
            ["routing_key", "code"],
            registry=r,
        )
        self.command_duration = Histogram(
            "statusek_command_duration_seconds",
            "From the start of a command's window to its reply and ack.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.window_size = Histogram(
            "statusek_window_size",
            "Deliveries applied in one transaction.",
            buckets=_WINDOW_BUCKETS,
            registry=r,
        )
        self.window_stage = Histogram(
            "statusek_window_stage_seconds",
            "Seconds per stage: queued per delivery (arrival to its window's start); apply, answer"
            " and ack per window (transaction committed; replies and notifications confirmed; acked).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.queries = Counter(
            "statusek_queries",
            "Queries answered, by routing key and reply code.",
            ["routing_key", "code"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "statusek_dead_lettered",
            "Deliveries sent to statusek.dead-letter, by reason (delivery-limit: by the broker).",
            ["reason"],
            registry=r,
        )
        self.reconnects = Counter(
            "statusek_reconnects",
            "Connections lost and made again, by dependency.",
            ["dependency"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "statusek_outbox_backlog", "Notifications committed but not yet published.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "statusek_outbox_oldest_age_seconds", "Age of the oldest unpublished notification.", registry=r
        )
        self.sweeper_lag = Gauge(
            "statusek_sweeper_lag_seconds",
            "Now minus the oldest deadline not yet finished (0 if none).",
            registry=r,
        )
        self.active_consumer = Gauge(
            "statusek_active_consumer",
            "1 while this replica is the active consumer of a command queue (partition);"
            " set at its first delivery there.",
            ["queue"],
            registry=r,
        )
        self.handovers = Counter(
            "statusek_partition_handovers",
            "Command partitions this replica stepped back from for the replica whose share they are.",
            registry=r,
        )
        self.notifications = Counter(
            "statusek_notifications_published",
            "Notifications published, by path: direct (by the window that committed them) or relay"
            " (the outbox's safety net, and global statuses).",
            ["path"],
            registry=r,
        )
        self.notifications_nacked = Counter(
            "statusek_notifications_nacked",
            "Notifications the broker refused (a nack: a bound queue is full with overflow"
            " reject-publish); the relay sends them again with a growing delay, the other queues"
            " get them again each time.",
            ["path"],
            registry=r,
        )
        self.replies_refused = Counter(
            "statusek_replies_refused",
            "Replies dropped because reply_to named no reply queue of the sender's"
            " (not direct reply-to, amq.gen-, or STATUSEK_REPLY_QUEUE_PATTERN).",
            registry=r,
        )
        self.holding_queues_redeclared = Counter(
            "statusek_holding_queues_redeclared",
            "Holding queues (statusek.dead-letter, statusek.rejected) found deleted when a copy was"
            " parked there, and declared again before it was parked once more.",
            ["queue"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "statusek_queue_messages", "Ready messages per statusek queue.", ["queue"], registry=r
        )
        self.ready = Gauge("statusek_ready", "1 while /readyz answers 200.", registry=r)
        self.database_stalled = Gauge(
            "statusek_database_stalled",
            "1 while this replica has stepped back from the command queues because Postgres does not"
            " answer (STATUSEK_DATABASE_STALL_TIMEOUT).",
            registry=r,
        )
        self.database_stalls = Counter(
            "statusek_database_stalls",
            "Times this replica stepped back because Postgres did not answer.",
            registry=r,
        )
        self.build_info = Gauge(
            "statusek_build_info", "Always 1; the version as a label.", ["version"], registry=r
        )
        self.build_info.labels(version=version()).set(1)
        # Series exist from the start at 0, so that increase() sees their first event.
        for dependency in ("rabbitmq", "postgres"):
            self.reconnects.labels(dependency=dependency)
        for stage in WINDOW_STAGES:
            self.window_stage.labels(stage=stage)
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason=reason)
        for path in ("direct", "relay"):
            self.notifications.labels(path=path)
            self.notifications_nacked.labels(path=path)

    def not_consuming(self, queues: Iterable[str]) -> None:
        """Every command queue at 0: the series exist, so an alert sees a queue nobody consumes."""
        for queue in queues:
            self.active_consumer.labels(queue=queue).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRIC_NAMES = frozenset(
    {
        "statusek_commands_total",
        "statusek_command_duration_seconds",
        "statusek_window_size",
        "statusek_window_stage_seconds",
        "statusek_queries_total",
        "statusek_dead_lettered_total",
        "statusek_reconnects_total",
        "statusek_outbox_backlog",
        "statusek_outbox_oldest_age_seconds",
        "statusek_sweeper_lag_seconds",
        "statusek_active_consumer",
        "statusek_partition_handovers_total",
        "statusek_notifications_published_total",
        "statusek_notifications_nacked_total",
        "statusek_queue_messages",
        "statusek_replies_refused_total",
        "statusek_holding_queues_redeclared_total",
        "statusek_ready",
        "statusek_database_stalled",
        "statusek_database_stalls_total",
        "statusek_build_info",
        "python_gc_collections_total",
        "python_gc_objects_collected_total",
        "python_gc_objects_uncollectable_total",
    }
)
