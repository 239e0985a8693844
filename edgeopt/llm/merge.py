"""`edgeopt merge` of an adapter onto a causal language model: LoRA (and the other PEFT methods that
fold into weights), including adapters trained with QLoRA on a 4-bit base. The adapter is merged into
the full-precision (float32) base weights — never into 4- or 8-bit ones — and the merged model is
checked against the PEFT model: its logits at every position of a few texts within ``--atol`` (plus a
relative 1e-4), and the next token it would pick everywhere identical. Outside either, nothing is written.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..artifact import Artifact, finalize, write_artifact
from ..errors import ConfigError, InputError, ValidationError

RTOL = 1e-4


def _texts(cfg) -> tuple[list[str], str]:
    from .export import PROMPTS

    if not cfg.check_data:
        from ..metrics import SAMPLE_TEXTS

        return (PROMPTS + list(SAMPLE_TEXTS))[: cfg.check_samples], "built-in sample sentences"
    from .quantize import read_texts

    return read_texts(cfg.check_data, cfg.check_samples)


def _logits(model, tok, texts: list[str], context: int) -> list[np.ndarray]:
    import torch

    out = []
    with torch.inference_mode():
        for t in texts:
            ids = tok(t, truncation=True, max_length=context)["input_ids"]
            if not ids:
                continue
            out.append(model(input_ids=torch.tensor([ids])).logits[0].float().numpy())
    return out


def merge_lm(parent: Artifact, adapter: Path, acfg: dict, shapes: dict, out, cfg) -> Artifact:
    import torch
    import transformers

    from ..models.architectures import load_config
    from ..models.hf import _load_failure, adopt_hf_folder, load_tokenizer
    from .families import check_family
    from ..stages._torch_common import import_peft
    from ..stages.merge import _check_fits

    task_type = str(acfg.get("task_type") or "").upper()
    if task_type and task_type != "CAUSAL_LM":
        raise ConfigError(f"{adapter}: a {task_type} adapter cannot be merged into the language model {parent.path}; "
                          "it needs a CAUSAL_LM adapter (task_type in adapter_config.json)")
    config = load_config(parent.path)
    check_family(config, parent.path)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:  # always full precision: a QLoRA adapter merges into the float32 weights its 4-bit base was made from
        base = transformers.AutoModelForCausalLM.from_pretrained(parent.path, config=config, dtype=torch.float32,
                                                                 use_safetensors=True).eval()
    except Exception as e:
        raise InputError(_load_failure(parent.path, config, e)) from e
    _check_fits(base, shapes, adapter)
    try:
        peft_model = import_peft().PeftModel.from_pretrained(base, adapter, is_trainable=False).eval()
    except Exception as e:
        raise ConfigError(f"{adapter}: PEFT cannot apply this adapter to {parent.path} ({str(e).splitlines()[0][:300]})") from e
    tok = load_tokenizer(parent)
    context = int(parent.manifest.model.model_extra.get("context") or getattr(config, "max_position_embeddings", 0) or 2048)
    texts, source = _texts(cfg)
    ref = _logits(peft_model, tok, texts, context)
    merged = peft_model.merge_and_unload().eval()
    got = _logits(merged, tok, texts, context)
    err = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got))
    within = all(np.allclose(b, a, atol=cfg.atol, rtol=RTOL) for a, b in zip(ref, got))
    positions = sum(a.shape[0] for a in ref)
    same = sum(int(np.sum(a.argmax(-1) == b.argmax(-1))) for a, b in zip(ref, got))
    if not within:
        raise ValidationError(f"the merged model's logits differ from the PEFT model's by up to {err:.3g} "
                              f"(atol {cfg.atol}, rtol {RTOL}); nothing was written")
    if same != positions:
        raise ValidationError(f"the merged model picks another next token than the PEFT model at {positions - same} of "
                              f"{positions} positions; nothing was written")

    with write_artifact(out, parent, cfg) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)  # with its chat template
        gen_cfg = parent.path / "generation_config.json"
        if gen_cfg.is_file() and not (tmp / gen_cfg.name).is_file():
            (tmp / gen_cfg.name).write_bytes(gen_cfg.read_bytes())
        adopted = adopt_hf_folder(tmp, task="text-generation")
        manifest = parent.manifest.child(stage="merge", config={**cfg.model_dump(), "adapter_config": acfg}, format="hf",
                                         task="text-generation", labels=None, io=adopted.manifest.io,
                                         model=adopted.manifest.model.model_dump())
        manifest.metrics = {"numeric_check": {"against": "peft model (float32 base)", "samples": len(ref), "data": source,
                                              "positions": positions, "atol": cfg.atol, "rtol": RTOL,
                                              "outputs": {"logits": {"max_abs_err": err, "next_token_agreement": same / positions}}},
                            "params": int(sum(p.numel() for p in merged.parameters())),
                            "adapter_params": int(sum(math.prod(s) for s in shapes.values()))}
        manifest = finalize(tmp, manifest)
    return Artifact(Path(out).expanduser().resolve(), manifest)
