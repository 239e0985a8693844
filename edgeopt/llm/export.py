"""`edgeopt export` of a text-generation model: ONNX Runtime GenAI's model builder writes the decoder
(prefill and decode in one graph, a KV cache with dynamic batch, sequence and past length, fused
GroupQueryAttention) from the local checkpoint folder; edgeopt then checks it against PyTorch.

The check, on a few prompts (``--check-data`` texts, else built-in ones): the prefill logits of the
last prompt token within ``--atol``/``--rtol``, and the greedy tokens of ``CHECK_TOKENS`` decode steps
identical. Outside either, nothing is written (exit 1).

Which exporter: ONNX Runtime GenAI's builder, evaluated against a plain ``torch.onnx`` export of the
decoder with a flat KV cache (benchmarks/llm_exporters.py): both give PyTorch's greedy tokens; the
builder's graph (fused GroupQueryAttention, the cache layout its generator preallocates) decodes faster,
so it is the one used, and the manifest records it. Its limits are its own: a family or config it cannot
build is reported as such (one line).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from ..artifact import Artifact, finalize, load_artifact, write_artifact
from ..errors import StageError, ValidationError

CHECK_TOKENS = 16
PROMPTS = ["Wireless noise-cancelling headphones with 30 hours of battery life.",
           "Organic green tea, 100 bags,",
           "Stainless steel kitchen knife"]


def _builder_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai")


def _prompts(cfg) -> list[str]:
    if not cfg.check_data:
        return PROMPTS
    from .quantize import read_texts

    return read_texts(cfg.check_data, cfg.check_samples)[0]


def build(src: Path, dst: Path, precision: str = "fp32", extra: Union[dict, None] = None) -> None:
    """Run the model builder on a checkpoint folder into ``dst`` (a subprocess: it is a CLI)."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-genai-cache-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(src), "-i", str(src), "-o", str(dst),
               "-p", precision, "-e", "cpu", "-c", cache]
        if extra:
            cmd += ["--extra_options", *[f"{k}={v}" for k, v in extra.items()]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if ("Error" in ln or "error" in ln) and not ln.startswith("File ")),
                    lines[-1] if lines else f"exit {proc.returncode}")
        raise StageError(f"ONNX Runtime GenAI's model builder {_builder_version()} cannot build {src} ({last[:300]})")


def check(parent: Artifact, child: Artifact, prompts: list[str], atol: float, rtol: float,
          tokens: int = CHECK_TOKENS) -> dict:
    """Prefill logits and greedy decode of ``child`` against ``parent`` (PyTorch), per prompt."""
    from .generate import GenerateConfig, load_generator

    ref, got = load_generator(parent), load_generator(child)
    rows, bad = [], []
    for p in prompts:
        _, ids = ref.prompt_ids(p, False)
        a, b = ref.prefill(ids)[0], got.prefill(ids)[0]
        err = float(np.max(np.abs(a - b)))
        ok = bool(np.allclose(b, a, atol=atol, rtol=rtol))
        cfg = GenerateConfig(max_new_tokens=tokens)
        ta, tb = ref.generate(p, cfg).tokens, got.generate(p, cfg).tokens
        same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        rows.append({"prompt_tokens": len(ids), "prefill_max_abs_err": err, "prefill_within": ok,
                     "greedy_tokens": len(ta), "greedy_identical": same if ta != tb else len(ta)})
        if not ok:
            bad.append(f"prefill logits differ by up to {err:.3g} (atol {atol}, rtol {rtol})")
        if ta != tb:
            bad.append(f"greedy tokens differ from step {same + 1} of {len(ta)}")
    rec = {"prompts": len(prompts), "tokens": tokens, "rows": rows,
           "prefill_max_abs_err": max(r["prefill_max_abs_err"] for r in rows),
           "greedy_identical_all": all(r["greedy_identical"] == r["greedy_tokens"] for r in rows)}
    if bad:
        raise ValidationError(f"the exported language model disagrees with PyTorch: {bad[0]}; nothing was written")
    return rec


def export_lm(parent: Artifact, out, cfg) -> Artifact:
    from .._optional import require
    from .families import check_family
    from ..models.architectures import load_config

    require("llm", purpose="exporting language models (ONNX Runtime GenAI's model builder)")
    require("train", purpose="checking the export against PyTorch", modules=("torch", "transformers"))
    pm = parent.manifest
    config = load_config(parent.path)
    family = check_family(config, parent.path)
    eos = getattr(config, "eos_token_id", None)
    with write_artifact(out, parent, cfg) as tmp:
        build(parent.path, tmp, "fp32")
        model = {"format": "genai", "file": "model.onnx", "precision": "fp32", "family": family,
                 "context": int(pm.model.model_extra.get("context") or getattr(config, "max_position_embeddings", 0) or 0) or None,
                 "builder": {"tool": "onnxruntime-genai model builder", "version": _builder_version(), "precision": "fp32",
                             "execution_provider": "cpu",
                             # why this exporter: measured against a plain torch.onnx export of the decoder
                             "chosen_over": "torch.onnx export with a flat KV cache (benchmarks/llm_exporters.py: "
                                            "same greedy tokens, builder decodes faster; benchmarks/RESULTS.md)"},
                 "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or [])}
        manifest = pm.child(stage="export", config=cfg.model_dump(), format="genai", model=model)
        child = Artifact(tmp, manifest)
        manifest.metrics = {"check": check(parent, child, _prompts(cfg), cfg.atol, cfg.rtol)}
        manifest = finalize(tmp, manifest)
    return load_artifact(Path(out).expanduser().resolve())
