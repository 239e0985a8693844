"""Measure one artifact in a clean process; called by edgeopt.bench.core.bench."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def main(job: dict) -> None:
    from ..artifact import load_artifact
    from ..data import load_dataset
    from ..metrics import predict, quality, sample_dataset
    from ..models.preprocess import Preprocessor
    from ..runtime import load_runtime
    from ..formats import handler_for
    from .core import BenchConfig

    cfg = BenchConfig.model_validate(job["config"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    art = load_artifact(job["artifact"], verify=False)
    pre = Preprocessor(art)
    data = load_dataset(cfg.data, kind=pre.kind) if cfg.data else sample_dataset(art, 64)
    t0 = time.perf_counter()
    rt = load_runtime(art, threads=cfg.threads)
    load_s = time.perf_counter() - t0
    seq = None if cfg.seq_len == "auto" else cfg.seq_len

    latency = []
    for b in cfg.batch_sizes:
        # Cycle through consecutive real batches of the data, so "auto" sequence
        # lengths follow the dataset instead of one lucky batch.
        n = max(1, len(data) // b)
        batches = [pre(_cycle(data.samples, i * b, b), seq_len=seq) for i in range(min(n, cfg.runs + cfg.warmup))]
        for i in range(cfg.warmup):
            rt.run(batches[i % len(batches)])
        times = []
        for i in range(cfg.runs):
            feeds = batches[(cfg.warmup + i) % len(batches)]
            t = time.perf_counter()
            rt.run(feeds)
            times.append((time.perf_counter() - t) * 1000)
        ts = np.asarray(times)
        seq_report = seq if seq else _mean_seq(batches)
        latency.append({"batch_size": b, "seq_len": seq_report, "p50_ms": float(np.percentile(ts, 50)),
                        "p90_ms": float(np.percentile(ts, 90)), "p99_ms": float(np.percentile(ts, 99)),
                        "throughput": float(b * 1000 / ts.mean())})

    eval_data = data.take(cfg.eval_samples)
    outputs = predict(rt, pre, eval_data.samples, batch_size=8, seq_len=seq)[0]
    labels = None
    if eval_data.labels is not None and art.manifest.task.endswith("classification"):
        labels = eval_data.label_indices(art.manifest.labels)
    np.save(out / "outputs.npy", outputs)
    result = {
        "latency": latency,
        "quality": quality(art.manifest.task, outputs, labels),
        "size_bytes": handler_for(art).size_bytes(art),
        "peak_rss_mb": peak_rss_mb(),
        "load_s": load_s,
        "data": eval_data.source,
    }
    (out / "result.json").write_text(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image, whereas
    ru_maxrss survives exec and would report the (larger) parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cycle(samples, start: int, n: int):
    idx = [(start + k) % len(samples) for k in range(n)]
    if isinstance(samples, np.ndarray):
        return samples[idx]
    return [samples[i] for i in idx]


def _mean_seq(batches) -> object:
    lens = [v.shape[1] for b in batches for k, v in b.items() if k == "input_ids"]
    return f"~{int(round(np.mean(lens)))}" if lens else None


if __name__ == "__main__":
    from ..errors import EdgeoptError

    try:
        main(json.loads(sys.argv[1]))
    except EdgeoptError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
