"""What tune measures for each variant: speed against the fp32 parent in the same interleaved runs
(so a noisy, shared machine moves both sides alike), and quality against fp32 and the labels."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np


@dataclass
class Workload:
    """Batches of real inputs, per batch size, preprocessed once (each padded to its longest input,
    or to a fixed sequence length)."""

    feeds: dict[int, list[dict[str, np.ndarray]]]
    seq: dict[int, Union[int, str]]  # per batch size: the fixed length, or '~N' (mean padded length)

    @classmethod
    def build(cls, pre, samples, batch_sizes: list[int], seq_len: Union[int, str], items: int = 64) -> "Workload":
        """About ``items`` inputs per batch size (2 to 16 batches), consecutive in the data."""
        feeds, seq = {}, {}
        for b in batch_sizes:
            n = max(2, min(16, items // b))
            chunks = [samples[i : i + b] for i in range(0, len(samples) - b + 1, b)][:n] or [samples[:b]]
            fixed = seq_len if isinstance(seq_len, int) else None
            feeds[b] = [pre(c, seq_len=fixed) for c in chunks]
            lens = [_length(f) for f in feeds[b]]
            seq[b] = fixed if fixed else (f"~{round(sum(lens) / len(lens))}" if all(lens) else "-")
        return cls(feeds, seq)


def _length(feeds: dict[str, np.ndarray]) -> Optional[int]:
    ids = feeds.get("input_ids")
    return int(ids.shape[1]) if ids is not None and ids.ndim == 2 else None


def time_against(ref, rt, work: Workload, rounds: int) -> dict:
    """Per batch size: median ms per batch of ``rt`` and of ``ref`` and the median of their ratio,
    the two alternating round by round (which one goes first alternates too).

    Each turn starts with one untimed run: the first run after the other session's is slow for reasons
    that are not the model's (cold caches, the other session's ONNX Runtime workers still spinning on
    the same cores) and measured up to 3x slower than a warm run on a 2-core machine."""
    for r in (ref, rt):  # warm-up: first runs allocate and pre-pack
        for fl in work.feeds.values():
            r.run(fl[0])
    out = {}
    for b, fl in work.feeds.items():
        ts = {0: [], 1: []}
        for i in range(rounds):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                runtime = (ref, rt)[which]
                runtime.run(fl[i % len(fl)])  # settle: see above
                t0 = time.perf_counter()
                for f in fl:
                    runtime.run(f)
                ts[which].append((time.perf_counter() - t0) / len(fl))
        ratios = [a / c for a, c in zip(ts[0], ts[1])]
        out[b] = {"ms": float(np.median(ts[1]) * 1e3), "ref_ms": float(np.median(ts[0]) * 1e3),
                  "speedup": float(np.median(ratios)), "seq": work.seq[b]}
    return out


def quality_of(task: str, got: np.ndarray, ref: np.ndarray, labels: Optional[np.ndarray]) -> dict:
    """accuracy (labelled classifiers), top-1 agreement (classifiers), cosine min / mean to fp32, and
    ``agreement``: what --min-agreement bounds (top-1 agreement for a classifier, else cosine min)."""
    from ..metrics import quality

    q = quality(task, got, labels, ref)
    out = {k: float(q[k]) for k in ("accuracy", "top1_agreement", "cosine_min", "cosine_mean") if k in q}
    out["agreement"] = out.get("top1_agreement", out["cosine_min"])
    return out


def geomean(xs) -> float:
    xs = [x for x in xs if x and x > 0]
    return float(np.exp(np.mean(np.log(xs)))) if xs else 0.0
