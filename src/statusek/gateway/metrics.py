"""Prometheus metrics of one gateway, on a registry of its own (as a worker's are)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, generate_latest

from statusek.identity import version

__all__ = ["GATEWAY_METRIC_NAMES", "GatewayMetrics"]

# An HTTP request takes a round trip to a worker: milliseconds, up to the gateway's 10 s wait.
_REQUEST_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """Prometheus metrics of one `statusek gateway`, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # python_gc_* (collections and objects collected per generation): see event_loop.collect_less.
        GCCollector(registry=r)
        self.requests = Counter(
            "statusek_gateway_requests",
            "HTTP requests answered, by route (`other` for a path that is none), HTTP status and the"
            " answer's code (statusek's reply code, or what the gateway answered itself).",
            ["route", "http_status", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "statusek_gateway_request_duration_seconds",
            "From a request's arrival to its answer, by route.",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "statusek_gateway_requests_in_flight", "HTTP requests being answered.", registry=r
        )
        self.ready = Gauge("statusek_ready", "1 while /readyz answers 200.", registry=r)
        self.build_info = Gauge(
            "statusek_build_info", "Always 1; the version as a label.", ["version"], registry=r
        )
        self.build_info.labels(version=version()).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


GATEWAY_METRIC_NAMES = frozenset(
    {
        "statusek_gateway_requests_total",
        "statusek_gateway_request_duration_seconds",
        "statusek_gateway_requests_in_flight",
        "statusek_ready",
        "statusek_build_info",
        "python_gc_collections_total",
        "python_gc_objects_collected_total",
        "python_gc_objects_uncollectable_total",
    }
)
