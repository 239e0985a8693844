"""Prometheus metrics for one server (own registry, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edgeopt_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("edgeopt_request_latency_seconds", "Request latency by route", ["route"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("edgeopt_batch_size", "Items per model call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.inference = Histogram("edgeopt_inference_seconds", "Model call time per batch", registry=r,
                                   buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.queue_depth = Gauge("edgeopt_queue_depth", "Items waiting for a batch", registry=r)
        self.in_flight = Gauge("edgeopt_in_flight_requests", "Requests being handled", registry=r)
        self.items = Counter("edgeopt_items", "Inputs predicted", registry=r)
        self.model_info = Info("edgeopt_model", "The served model", registry=r)
