"""Helpers shared by the stages that change a PyTorch network (prune, distill, QAT):
load it trainable, feed it data through the artifact's own preprocessing, measure it,
and save it in its parent's format (hf or torch) — from rank 0 only under torchrun."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .. import distributed as D
from ..artifact import Artifact, finalize, load_artifact, write_artifact
from ..errors import ConfigError, InputError


def torch_parent(model, stage: str) -> Artifact:
    parent = model if isinstance(model, Artifact) else load_artifact(model)
    if parent.manifest.format not in ("hf", "torch"):
        raise ConfigError(f"{parent.path}: {stage} works on PyTorch models (hf or torch artifacts), not {parent.manifest.format}; "
                          "run it before `edgeopt export`")
    if not parent.manifest.task.endswith("classification"):
        raise ConfigError(f"{parent.path}: {stage} needs a classifier (task {parent.manifest.task})")
    return parent


def labelled(ref: Optional[str], pre, labels, what: str):
    """A labelled dataset as (samples, label indices)."""
    from ..data import load_dataset

    if not ref:
        raise ConfigError(f"{what} needs labelled data: give --data DATA")
    ds = load_dataset(ref, kind=pre.kind)
    if ds.labels is None:
        raise InputError(f"{ds.source}: has no labels; {what} needs a 'label' on every row")
    return ds, ds.label_indices(labels)


def collate_fn(pre):
    import torch

    def collate(samples):
        if pre.kind == "image":
            feeds = {pre.input_names[0]: pre.image(np.stack(samples))}
        else:
            feeds = pre.text(list(samples))
        dev = D.device()
        return tuple(torch.from_numpy(feeds[n]).to(dev) for n in pre.input_names)

    return collate


def accuracy(module, pre, samples, y: np.ndarray, batch_size: int = 64) -> float:
    import torch

    collate = collate_fn(pre)
    preds = []
    dev = next(module.parameters()).device
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            x = tuple(t.to(dev) for t in collate(list(samples[i : i + batch_size])))
            o = module(*x)
            preds.append((o[0] if isinstance(o, tuple) else o).argmax(-1).cpu().numpy())
    return float((np.concatenate(preds) == y).mean())


def torch_latency_ms(module, pre, samples, batch_size: int = 8, runs: int = 10) -> float:
    """Median eager latency on real batches (a quick before/after figure for the manifest)."""
    import torch

    collate = collate_fn(pre)
    batch = collate(list(samples[:batch_size]))
    module = module.to("cpu").eval()
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            t = time.perf_counter()
            module(*batch)
            if i >= 2:
                times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def params_of(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def save_module(parent: Artifact, wrapper, out, *, stage: str, config: dict, metrics: dict,
                model_updates: Optional[dict] = None) -> Artifact:
    """Write ``wrapper`` (from load_torch_model) as an artifact of the parent's format.

    Under torchrun only rank 0 writes; the other ranks wait, then load what rank 0 wrote.
    """
    out = Path(out).expanduser().resolve()
    if not D.is_main():
        D.barrier()
        return load_artifact(out)
    pm = parent.manifest
    try:
        if pm.format == "hf":
            from ..models.tokenizer import save_tokenizer, tokenizer_folder

            with write_artifact(out, parent) as tmp:
                wrapper.model.save_pretrained(tmp, safe_serialization=True)
                if pm.io.preprocessing is not None and pm.io.preprocessing.kind == "text":
                    save_tokenizer(tokenizer_folder(parent), tmp)
                    io = pm.io.model_copy(deep=True)
                    io.preprocessing.tokenizer = "."
                elif (parent.path / "preprocessor_config.json").is_file():
                    shutil.copy2(parent.path / "preprocessor_config.json", tmp / "preprocessor_config.json")
                    io = pm.io
                else:
                    io = pm.io
                manifest = pm.child(stage=stage, config=config, io=io, model={**pm.model.model_dump(), **(model_updates or {})})
                manifest.metrics = metrics
                manifest = finalize(tmp, manifest)
            art = Artifact(out, manifest)
        else:
            from ..models.torch_module import save_torch_artifact

            info = pm.model
            src = parent.path / info.source if info.source else None
            art = save_torch_artifact(wrapper, out, factory=info.factory, task=pm.task, io=pm.io, labels=pm.labels,
                                      source_file=src, kwargs=info.kwargs, parent=pm, stage=stage,
                                      config=config, metrics=metrics, extra_model=model_updates)
    finally:
        D.barrier()
    return art


def import_peft():
    """PEFT, imported with bitsandbytes' CPU-kernel notices silenced (peft imports bitsandbytes when it is
    installed, and its CPU backend warns that an optional kernel package is missing)."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import peft

    return peft
