"""Prometheus metrics for one server.

One process: the server's own registry (so several apps can live in one process), with the usual
``process_*`` metrics of that process. Several worker processes (``serve --workers N``): every
worker writes its samples to prometheus-client's multiprocess files in the directory the parent
made (``PROMETHEUS_MULTIPROC_DIR``, set before any worker imports prometheus_client), and whichever
worker answers a scrape merges all of them, so ``/metrics`` counts the whole server whoever
answers; ``process_*`` metrics then carry a ``pid`` label, one series per live worker.
"""
from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


def _buckets(base: tuple[float, ...], timeout_s: float) -> tuple[float, ...]:
    """``base`` up to the request timeout, plus the timeout itself: nothing lasts longer than it."""
    return tuple(sorted({b for b in base if b < timeout_s} | {float(timeout_s)}))


class ServeMetrics:
    def __init__(self, timeout_s: float = 30.0, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        if multiprocess and not os.environ.get(MULTIPROC_ENV):
            raise RuntimeError(f"multiprocess metrics need {MULTIPROC_ENV}, set before prometheus_client is imported")
        # multiprocess: samples go to the shared files, not to a registry of this process
        r = None if multiprocess else CollectorRegistry()
        self.registry = r
        buckets = _buckets(LATENCY_BUCKETS, timeout_s)
        self.requests = Counter("edgeopt_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("edgeopt_request_latency_seconds", "Request latency by route", ["route"], registry=r,
                                 buckets=buckets)
        self.batch_size = Histogram("edgeopt_batch_size", "Items per model call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_tokens = Histogram("edgeopt_batch_tokens", "Padded tokens per model call (items x longest item)",
                                      registry=r, buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768))
        self.inference = Histogram("edgeopt_inference_seconds", "Model call time per batch", registry=r,
                                   buckets=_buckets((0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                     1, 2.5, 5, 10, 30, 60, 120), timeout_s))
        self.queue_depth = Gauge("edgeopt_queue_depth", "Items waiting for a batch", registry=r, multiprocess_mode="livesum")
        self.in_flight = Gauge("edgeopt_in_flight_requests", "Requests being handled (scrapes not counted)", registry=r,
                               multiprocess_mode="livesum")
        self.items = Counter("edgeopt_items", "Inputs predicted", registry=r)
        self.cancelled = Counter("edgeopt_cancelled_requests", "Predictions abandoned: their caller timed out or went away",
                                 ["reason"], registry=r)
        self.dropped = Counter("edgeopt_dropped_items", "Queued inputs never run because their caller stopped waiting",
                               registry=r)
        self.model_info = Gauge("edgeopt_model_info", "The served model (value 1)", ["name", "task", "format", "precision", "target"],
                                registry=r, multiprocess_mode="max")
        if r is not None:
            ProcessCollector(registry=r)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        folder = Path(os.environ[MULTIPROC_ENV])
        for f in folder.glob("gauge_live*.db"):  # a worker that crashed: its in-flight and queue leave the sums
            pid = f.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not alive(int(pid)):
                mark_process_dead(int(pid), str(folder))
        r = CollectorRegistry()
        MultiProcessCollector(r)
        r.register(_WorkersProcessCollector(folder))
        return generate_latest(r)

    def worker_exit(self) -> None:
        """This worker is stopping: its live gauges (in flight, queue) leave the sums."""
        if self.multiprocess:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_pids(folder: Path) -> list[int]:
    """Live processes that wrote multiprocess samples into ``folder`` (files end in _<pid>.db)."""
    pids = set()
    for f in folder.glob("*.db"):
        tail = f.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return sorted(p for p in pids if alive(p))


class _WorkersProcessCollector:
    """``process_*`` metrics (CPU, memory, open files...) of every live worker, labelled by pid."""

    def __init__(self, folder: Path):
        self.folder = folder

    def collect(self):
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Metric] = {}
        for pid in worker_pids(self.folder):
            for fam in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation + " (per worker)", fam.type, fam.unit)
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value, s.timestamp)
        yield from merged.values()
