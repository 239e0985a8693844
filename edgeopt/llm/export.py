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

``--adapter LORA``: the LoRA adapter is not merged but kept as a float side branch of each projection it
adapts (``y = W x + B (A x)``: the builder's ``lora_A``/``lora_B`` MatMuls), and the check runs against
the PEFT model (base plus adapter). ``quantize --weights int4`` then rounds the base weights to int4 and
the small adapter factors to int8 (``--adapter-weights``), so the adapter's update is not lost in the
base's int4 rounding: a LoRA delta is typically a fraction of one int4 step of the weight it adapts, and
merged into it most of it rounds away (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from ..artifact import Artifact, finalize, load_artifact, write_artifact
from ..errors import ConfigError, StageError, ValidationError

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


# the projections ONNX Runtime GenAI's builder keeps a LoRA branch on (its make_matmul_lora), per family
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj")


def lora_modules(shapes: dict) -> list[str]:
    """The adapted modules' short names (q_proj, ...) of an adapter's weights."""
    return sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in shapes if ".lora_" in k})


def read_lora(adapter: Union[str, Path]) -> tuple[Path, dict, dict]:
    """The adapter folder, its config and weight shapes; refused in one line unless the builder can keep it
    unmerged (plain LoRA on the attention and MLP projections)."""
    from ..stages.merge import _read_adapter

    path = Path(adapter).expanduser()
    acfg, shapes = _read_adapter(path)
    ptype = str(acfg.get("peft_type", "")).upper()
    fix = "merge it (`edgeopt merge`) and export the merged model"
    if ptype != "LORA":
        raise ConfigError(f"{path}: a {ptype} adapter cannot be kept unmerged (only LoRA can); {fix}")
    task_type = str(acfg.get("task_type") or "").upper()
    if task_type and task_type != "CAUSAL_LM":
        raise ConfigError(f"{path}: a {task_type} adapter does not fit a language model; it needs a CAUSAL_LM adapter")
    # LoRA variants the builder's make_matmul_lora does not implement (it writes B (A x) and nothing else)
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"), ("lora_bias", "a LoRA bias"),
                     ("use_qalora", "QALoRA"), ("layer_replication", "layer_replication"),
                     ("alora_invocation_tokens", "aLoRA"), ("target_parameters", "target_parameters"),
                     ("use_bdlora", "BD-LoRA"), ("trainable_token_indices", "trainable tokens")):
        if acfg.get(key):
            raise ConfigError(f"{path}: {why} cannot be kept unmerged by ONNX Runtime GenAI's builder; {fix}")
    if any(k.endswith(".lora_B.bias") or k.endswith(".lora_A.bias") for k in shapes):
        raise ConfigError(f"{path}: a LoRA bias cannot be kept unmerged by ONNX Runtime GenAI's builder; {fix}")
    others = sorted(set(lora_modules(shapes)) - set(LORA_MODULES))
    if others or any(".lora_" not in k for k in shapes):
        what = f"adapts {', '.join(others)}" if others else "saves whole modules"
        raise ConfigError(f"{path}: the adapter {what}; an unmerged LoRA can only adapt {', '.join(LORA_MODULES)}: {fix}")
    return path, acfg, shapes


def _fits(folder: Path, config, shapes: dict, adapter: Path) -> None:
    """The adapter's modules and shapes against the base's, on a weightless (meta-device) model: says which
    modules differ before anything is loaded or built."""
    import torch
    import transformers

    from ..stages.merge import _check_fits

    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except Exception:  # the real load (the reference, after the build) reports it with its fix
            return
    _check_fits(model, shapes, adapter)


def build(src: Path, dst: Path, precision: str = "fp32", extra: Union[dict, None] = None,
          adapter: Union[Path, None] = None) -> None:
    """Run the model builder on a checkpoint folder into ``dst`` (a subprocess: it is a CLI), with
    ``adapter`` (a LoRA folder) kept unmerged."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-genai-cache-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(src), "-i", str(src), "-o", str(dst),
               "-p", precision, "-e", "cpu", "-c", cache]
        extra = dict(extra or {})
        if adapter is not None:  # a plain name: the builder splits KEY=VALUE options and strips the value
            link = Path(cache) / "adapter"
            link.symlink_to(adapter.resolve(), target_is_directory=True)
            extra["adapter_path"] = str(link)
        if extra:
            cmd += ["--extra_options", *[f"{k}={v}" for k, v in extra.items()]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if ("Error" in ln or "error" in ln) and not ln.startswith("File ")),
                    lines[-1] if lines else f"exit {proc.returncode}")
        raise StageError(f"ONNX Runtime GenAI's model builder {_builder_version()} cannot build {src} ({last[:300]})")


def check(parent, child: Artifact, prompts: list[str], atol: float, rtol: float,
          tokens: int = CHECK_TOKENS) -> dict:
    """Prefill logits and greedy decode of ``child`` against ``parent`` (PyTorch: an artifact or its loaded
    generator), per prompt."""
    from .generate import GenerateConfig, Generator, load_generator

    ref = parent if isinstance(parent, Generator) else load_generator(parent)
    got = load_generator(child)
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
    from .generate import TorchGenerator

    pm = parent.manifest
    config = load_config(parent.path)
    family = check_family(config, parent.path)
    eos = getattr(config, "eos_token_id", None)
    adapter = None
    if cfg.adapter:
        path, acfg, shapes = read_lora(cfg.adapter)
        if path.resolve().is_relative_to(parent.path.resolve()):
            raise ConfigError(f"--adapter {cfg.adapter}: lies inside the model folder {parent.path}; give the base "
                              "checkpoint and the adapter folder separately")
        _fits(parent.path, config, shapes, path)
        ranks = sorted({s[0] for k, s in shapes.items() if ".lora_A." in k})
        adapter = {"path": str(path.resolve()), "peft_type": "LORA", "r": acfg.get("r"), "ranks": ranks,
                   "lora_alpha": acfg.get("lora_alpha"),
                   "use_rslora": bool(acfg.get("use_rslora")), "base_model_name_or_path": acfg.get("base_model_name_or_path"),
                   "modules": lora_modules(shapes),
                   "params": int(sum(math.prod(s) for s in shapes.values())), "form": "unmerged: float lora_A/lora_B MatMuls",
                   "config": acfg}
    with write_artifact(out, parent, cfg) as tmp:
        build(parent.path, tmp, "fp32", adapter=Path(adapter["path"]) if adapter else None)
        # the PyTorch reference once the builder has exited (both at once would double the peak memory)
        ref = TorchGenerator(parent, adapter=Path(adapter["path"]) if adapter else None)
        model = {"format": "genai", "file": "model.onnx", "precision": "fp32", "family": family,
                 "context": int(pm.model.model_extra.get("context") or getattr(config, "max_position_embeddings", 0) or 0) or None,
                 "builder": {"tool": "onnxruntime-genai model builder", "version": _builder_version(), "precision": "fp32",
                             "execution_provider": "cpu",
                             # why this exporter: measured against a plain torch.onnx export of the decoder
                             "chosen_over": "torch.onnx export with a flat KV cache (benchmarks/llm_exporters.py: "
                                            "same greedy tokens, builder decodes faster; benchmarks/RESULTS.md)"},
                 "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or [])}
        if adapter:
            model["adapter"] = adapter
        manifest = pm.child(stage="export", config=cfg.model_dump(), format="genai", model=model)
        child = Artifact(tmp, manifest)
        rec = check(ref, child, _prompts(cfg), cfg.atol, cfg.rtol)
        if adapter:
            rec["against"] = "peft model (float32 base + adapter, unmerged)"
        manifest.metrics = {"check": rec}
        manifest = finalize(tmp, manifest)
    return load_artifact(Path(out).expanduser().resolve())
