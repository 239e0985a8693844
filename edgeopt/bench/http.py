"""`edgeopt bench --url`: an HTTP load generator for `edgeopt serve` (or any server with the same API).

Bounded by request count and/or duration; reports p50/p90/p99 latency, throughput and errors in
the same table as the in-process bench, plus accuracy when the data is labelled.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, InputError, StageError
from .core import BenchConfig, BenchReport, BenchRow, machine_info


class LoadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    concurrency: int = Field(8, ge=1, le=1024)
    requests: Optional[int] = Field(None, ge=1)
    duration_s: Optional[float] = Field(None, gt=0)
    data: Optional[str] = None
    items_per_request: int = Field(1, ge=1)
    api_key_env: Optional[str] = None
    timeout_s: float = Field(30.0, gt=0)
    warmup: int = Field(4, ge=0)


def _payloads(cfg: LoadConfig, kind: Optional[str]):
    from ..data import load_dataset
    from ..metrics import SAMPLE_TEXTS

    if kind not in ("text", None):
        raise ConfigError("the load generator sends text inputs; this server's model takes images")
    if cfg.data:
        ds = load_dataset(cfg.data, kind="text")
        texts, labels = list(ds.samples), ds.labels
    else:
        texts, labels = list(SAMPLE_TEXTS), None
    k = cfg.items_per_request
    groups = [list(range(i, i + k)) for i in range(0, len(texts) - k + 1, k)] or [list(range(len(texts)))]
    return texts, labels, groups, (cfg.data or "built-in sample sentences")


def load_test(cfg: LoadConfig) -> BenchReport:
    from .._optional import require

    require("serve", purpose="the HTTP load test", modules=("httpx",))
    return asyncio.run(_load_test(cfg))


async def _load_test(cfg: LoadConfig) -> BenchReport:
    import httpx

    base = cfg.url.rstrip("/")
    headers = {}
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {cfg.api_key_env}: that environment variable is empty or unset")
        headers["Authorization"] = f"Bearer {key}"
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=cfg.timeout_s, limits=limits) as client:
        try:
            info = (await client.get("/v1/model")).raise_for_status().json()
        except httpx.HTTPError as e:
            raise InputError(f"{base}/v1/model: cannot reach the server ({type(e).__name__}: {e}); is `edgeopt serve` running there?") from e
        kind = (info.get("preprocessing") or {}).get("kind")
        texts, labels, groups, source = _payloads(cfg, kind)
        for g in groups[: cfg.warmup]:
            await client.post("/v1/predict", json={"inputs": [texts[i] for i in g]})

        total = cfg.requests if cfg.requests is not None else (None if cfg.duration_s else 200)
        deadline = time.perf_counter() + cfg.duration_s if cfg.duration_s else None
        lat: list[float] = []
        status: Counter = Counter()
        correct = scored = 0
        issued = 0
        label_names = info.get("labels") or []

        async def worker():
            nonlocal issued, correct, scored
            while True:
                if total is not None and issued >= total:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                g = groups[issued % len(groups)]
                issued += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", json={"inputs": [texts[i] for i in g]})
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                    r = None
                lat.append((time.perf_counter() - t) * 1000)
                status[code] += 1
                if r is not None and code == 200 and labels is not None and label_names:
                    for i, p in zip(g, r.json().get("predictions", [])):
                        scored += 1
                        correct += int(str(labels[i]) == p["label"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        wall = time.perf_counter() - t0
    if not lat:
        raise StageError("no requests were sent; give --requests or --duration")
    ok = status.get(200, 0)
    ts = np.asarray(lat)
    row = BenchRow(
        artifact=f"{info.get('name')} @ {base}", path=base, format="http", precision=str(info.get("precision")),
        batch_size=cfg.items_per_request, seq_len="auto", p50_ms=float(np.percentile(ts, 50)),
        p90_ms=float(np.percentile(ts, 90)), p99_ms=float(np.percentile(ts, 99)),
        throughput=ok * cfg.items_per_request / wall, accuracy=(correct / scored) if scored else None,
        concurrency=cfg.concurrency, requests=len(lat), errors=len(lat) - ok,
        status_counts={str(k): v for k, v in status.items()},
    )
    return BenchReport(config=BenchConfig(runs=len(lat), warmup=cfg.warmup, batch_sizes=[cfg.items_per_request]),
                       data=source, threads=None, machine=machine_info(), rows=[row])
