"""Numeric agreement, accuracy and fidelity: the checks every conversion records."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .artifact import Artifact, ImagePreprocessing
from .data import Dataset

# Real sentences of varied length used to check text models when no data is given.
SAMPLE_TEXTS = [
    "Wireless noise-cancelling headphones with 30 hours of battery life.",
    "Stainless steel chef's knife, 8 inch, full tang with an ergonomic handle.",
    "The quick brown fox jumps over the lazy dog.",
    "Organic green tea, 100 bags.",
    "Kids' waterproof hiking boots with a grippy rubber sole and padded collar for all-day comfort on the trail.",
    "How do I reset my password?",
    "A paperback mystery novel set in 1920s Cairo, the first in a bestselling series.",
    "ok",
    "Replacement air filter for most compact cars; fits 2015-2022 models and improves cabin air quality.",
    "Grain-free salmon recipe dry dog food for adult dogs, 12 lb bag.",
    "Ceramic non-stick frying pan, dishwasher safe, works on induction hobs.",
    "Matte liquid lipstick in a long-lasting rose shade.",
]


def sample_dataset(artifact: Artifact, n: int = 16, seed: int = 0) -> Dataset:
    """Inputs for a check when the user gave no data: real sentences, or random images in pixel range."""
    pre = artifact.manifest.io.preprocessing
    if isinstance(pre, ImagePreprocessing):
        rng = np.random.default_rng(seed)
        hi = 1.0 / pre.scale if pre.scale else 1.0
        imgs = rng.uniform(0, hi, size=(n, pre.size[0], pre.size[1], pre.channels)).astype(np.float32)
        if pre.channels == 1:
            imgs = imgs[..., 0]
        return Dataset("image", imgs, None, "random images")
    return Dataset("text", (SAMPLE_TEXTS * (n // len(SAMPLE_TEXTS) + 1))[:n], None, "built-in sample sentences")


def predict(runtime, preprocessor, samples, batch_size: int = 8, seq_len: Optional[int] = None, progress=None) -> list[np.ndarray]:
    """Run all samples through ``runtime`` in batches; return each output concatenated."""
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(samples), batch_size):
        feeds = preprocessor(samples[i : i + batch_size], seq_len=seq_len)
        res = runtime.run(feeds)
        outs.append(res)
        if progress is not None:
            progress(min(batch_size, len(samples) - i))
    return [np.concatenate([o[k] for o in outs], axis=0) for k in range(len(outs[0]))]


def numeric_agreement(names: Sequence[str], ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                      atol: float, rtol: float) -> tuple[dict, list[str]]:
    """Per-output max abs / relative error; returns (record, failures)."""
    record, failures = {}, []
    for name, r, g in zip(names, ref, got):
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r64.shape != g64.shape:
            failures.append(f"{name}: shape {g64.shape} != reference {r64.shape}")
            record[name] = {"shape_mismatch": [list(g64.shape), list(r64.shape)]}
            continue
        diff = np.abs(r64 - g64)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(r64), 1e-12)).max()) if diff.size else 0.0
        ok = bool(np.all(diff <= atol + rtol * np.abs(r64))) and bool(np.isfinite(g64).all())
        record[name] = {"max_abs_err": max_abs, "max_rel_err": max_rel, "within_tolerance": ok}
        if not ok:
            failures.append(f"{name}: max abs err {max_abs:.3g}, max rel err {max_rel:.3g} (atol {atol:g}, rtol {rtol:g})")
    return record, failures


def quality(task: str, out: np.ndarray, labels: Optional[np.ndarray] = None, ref: Optional[np.ndarray] = None) -> dict:
    """Accuracy against labels and/or fidelity against a reference model's outputs."""
    res: dict = {"samples": int(out.shape[0])}
    classify = task.endswith("classification")
    if classify and labels is not None:
        res["accuracy"] = float((out.argmax(-1) == labels).mean())
    if ref is not None:
        if classify:
            res["top1_agreement"] = float((out.argmax(-1) == ref.argmax(-1)).mean())
        a = out.reshape(out.shape[0], -1).astype(np.float64)
        b = ref.reshape(ref.shape[0], -1).astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        res["cosine_mean"] = float(cos.mean())
        res["cosine_min"] = float(cos.min())
    return res
