"""Merge a PEFT adapter (LoRA and the variants PEFT can merge, with ``modules_to_save`` such as a
classification head) into full-precision base weights, and check the merged model against the
PEFT model on real inputs. Causal language models (LoRA and QLoRA adapters): edgeopt/llm/merge.py."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from ..artifact import Artifact, finalize, load_artifact, write_artifact
from ..errors import ConfigError, InputError, ValidationError
from ..outputs import check_output
from .registry import StageConfig, stage

# PEFT methods whose weights fold into the base layers (merge_and_unload). Prompt-style methods
# (prompt/prefix/p-tuning, adaption prompt, ...) add virtual tokens and cannot be merged.
MERGEABLE = {"LORA", "ADALORA", "LOHA", "LOKR", "IA3", "BOFT", "OFT", "VERA", "HRA", "FOURIERFT", "RANDLORA",
             "VBLORA", "C3A", "SHIRA", "MISS", "ROAD", "DELORA"}
TASK_HEADS = {"SEQ_CLS": "text-classification", "FEATURE_EXTRACTION": "feature-extraction"}


class MergeConfig(StageConfig):
    kind: Literal["merge"] = "merge"
    adapter: str
    atol: float = Field(1e-4, gt=0)
    check_data: Optional[str] = None
    check_samples: int = Field(16, ge=1)


def _read_adapter(adapter: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    if adapter.is_file():
        raise InputError(f"{adapter}: is a file; --adapter takes the folder PEFT's save_pretrained wrote")
    if not adapter.is_dir():
        raise InputError(f"{adapter}: no such adapter folder")
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.is_file():
        raise InputError(f"{adapter}: no adapter_config.json; point --adapter at the folder PEFT's save_pretrained wrote")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise InputError(f"{cfg_path}: not valid JSON ({e})") from e
    ptype = str(cfg.get("peft_type", "")).upper()
    if ptype not in MERGEABLE:
        raise ConfigError(f"{adapter}: adapter type '{ptype or 'unknown'}' cannot be merged into weights; "
                          f"mergeable types: {', '.join(sorted(MERGEABLE))}")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter / "adapter_model.bin").is_file():
            import torch

            state = torch.load(adapter / "adapter_model.bin", map_location="cpu", weights_only=True)
            return cfg, {k: tuple(v.shape) for k, v in state.items()}
        raise InputError(f"{adapter}: no adapter_model.safetensors (or .bin)")
    try:
        with safe_open(weights, "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{weights}: cannot read the adapter weights ({str(e).splitlines()[0]}); the file may be truncated") from e
    return cfg, shapes


def _check_fits(base_model, shapes: dict, adapter: Path) -> None:
    """Every adapted module must exist in the base with matching in/out features — say which do not."""
    modules = dict(base_model.named_modules())
    problems = []
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B"):
            if marker in name:
                mod_name = name.split(marker)[0]
                mod = modules.get(mod_name)
                if mod is None:
                    problems.append(f"module '{mod_name}' not in the base model")
                    break
                w = getattr(mod, "weight", None)
                if w is None or w.ndim != 2:
                    break
                out_f, in_f = w.shape
                if marker == ".lora_A." and shape[-1] != in_f:
                    problems.append(f"{mod_name}: adapter expects {shape[-1]} input features, base has {in_f}")
                if marker == ".lora_B." and shape[0] != out_f:
                    problems.append(f"{mod_name}: adapter expects {shape[0]} output features, base has {out_f}")
                break
        else:
            if ".modules_to_save." in key or key.endswith(".weight") and "lora" not in key:
                mod_name = name.rsplit(".", 1)[0]
                mod = modules.get(mod_name)
                if mod is not None and hasattr(mod, "weight") and mod.weight is not None and name.endswith(".weight"):
                    if tuple(mod.weight.shape) != shape:
                        problems.append(f"{mod_name}: saved module has shape {list(shape)}, base has {list(mod.weight.shape)}")
    problems = list(dict.fromkeys(problems))  # lora_A and lora_B of one module: said once
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ConfigError(f"{adapter}: adapter was trained for another base model: " + "; ".join(problems[:4]) + more)


@stage("merge")
def merge(base: Artifact | str | Path, out: str | Path, config: MergeConfig) -> Artifact:
    import torch
    import transformers
    from ._torch_common import import_peft

    from ..data import load_dataset
    from ..metrics import numeric_agreement, predict, sample_dataset
    from ..models.hf import _wrap, adopt_hf_folder
    from ..models.tokenizer import save_tokenizer, tokenizer_folder
    from ..models.preprocess import Preprocessor
    from ..runtime.torch import TorchRuntime

    cfg = config
    adapter = Path(cfg.adapter).expanduser()
    acfg, shapes = _read_adapter(adapter)
    parent = base if isinstance(base, Artifact) else load_artifact(base)
    check_output(out, parent, cfg)
    pm = parent.manifest
    if adapter.resolve().is_relative_to(parent.path.resolve()):
        raise ConfigError(f"{parent.path}: already holds {adapter.name}/ merged into its weights (it is the fine-tuned "
                          f"artifact); merge into the base the adapter was trained on: {acfg.get('base_model_name_or_path')}")
    if pm.format != "hf":
        raise ConfigError(f"{parent.path}: merge needs the Hugging Face base checkpoint (got format {pm.format})")
    hf_cfg = json.loads((parent.path / "config.json").read_text())
    if hf_cfg.get("quantization_config"):
        raise ConfigError(f"{parent.path}: the base is stored quantized ({hf_cfg['quantization_config'].get('quant_method', '?')}); "
                          "merge into the full-precision base checkpoint the quantized one was loaded from")
    if pm.task == "text-generation" or str(acfg.get("task_type", "")).upper() == "CAUSAL_LM":
        if pm.task != "text-generation":
            raise ConfigError(f"{adapter}: a CAUSAL_LM adapter, but {parent.path} is a {pm.task} model; merge it into "
                              f"the language model it was trained on: {acfg.get('base_model_name_or_path') or '?'}")
        from ..llm.merge import merge_lm

        return merge_lm(parent, adapter, acfg, shapes, out, cfg)
    task = TASK_HEADS.get(str(acfg.get("task_type", "")).upper(), pm.task)
    labels = None
    if (adapter / "labels.json").is_file():
        labels = json.loads((adapter / "labels.json").read_text())
    elif (adapter.parent / "manifest.json").is_file():  # an adapter kept inside a finetune artifact
        labels = json.loads((adapter.parent / "manifest.json").read_text()).get("labels")
    head = [s for k, s in shapes.items() if "modules_to_save" in k or k.endswith("classifier.weight")]
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    auto = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    kw = {}
    if task == "text-classification":
        n = len(labels) if labels else (head[0][0] if head else hf_cfg.get("num_labels", 2))
        base_labels = pm.labels if pm.task == "text-classification" else None
        labels = labels or (base_labels if base_labels and len(base_labels) == n else [f"LABEL_{i}" for i in range(n)])
        kw = dict(num_labels=n, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
                  # the head comes from the adapter (modules_to_save): the base's may have another size
                  ignore_mismatched_sizes=True)
    # Always full precision: QLoRA adapters merge into fp32 base weights, never into 4/8-bit ones.
    base_model = auto.from_pretrained(parent.path, dtype=torch.float32, use_safetensors=True, **kw).eval()
    _check_fits(base_model, shapes, adapter)
    try:
        peft_model = import_peft().PeftModel.from_pretrained(base_model, adapter, is_trainable=False).eval()
    except Exception as e:
        raise ConfigError(f"{adapter}: PEFT cannot apply this adapter to {parent.path} ({str(e).splitlines()[0][:300]})") from e

    pre = Preprocessor(parent)  # the adapter does not change the tokenizer
    data = load_dataset(cfg.check_data, kind="text").take(cfg.check_samples) if cfg.check_data else sample_dataset(parent, cfg.check_samples)
    names = [t.name for t in pm.io.inputs]
    pooling, normalize = getattr(pm.model, "pooling", None), bool(getattr(pm.model, "normalize", False))
    ref = predict(TorchRuntime(parent, module=_wrap(peft_model, task, names, pooling, normalize).eval()), pre, data.samples, batch_size=8)
    merged = peft_model.merge_and_unload().eval()
    got = predict(TorchRuntime(parent, module=_wrap(merged, task, names, pooling, normalize).eval()), pre, data.samples, batch_size=8)
    record, failures = numeric_agreement(["logits" if task == "text-classification" else "embeddings"], ref, got, cfg.atol, 0.0)
    if failures:
        raise ValidationError("merged model disagrees with the PEFT model", failures)

    with write_artifact(out, parent, cfg) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer_folder(parent), tmp)
        adopted = adopt_hf_folder(tmp, task=task)
        manifest = pm.child(stage="merge", config={**cfg.model_dump(), "adapter_config": acfg},
                            format="hf", task=task, labels=adopted.manifest.labels,
                            io=adopted.manifest.io, model={**adopted.manifest.model.model_dump(), **({"pooling": pooling, "normalize": normalize} if task == "feature-extraction" else {})})
        manifest.metrics = {"numeric_check": {"against": "peft model", "samples": len(data), "data": data.source,
                                              "atol": cfg.atol, "outputs": record},
                            "params": int(sum(p.numel() for p in merged.parameters())),
                            "adapter_params": int(sum(math.prod(s) for s in shapes.values()))}
        manifest = finalize(tmp, manifest)
    return Artifact(Path(out).expanduser().resolve(), manifest)
