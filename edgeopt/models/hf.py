"""Hugging Face checkpoint folders: adopt as a source artifact, load as a module."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..artifact import TASKS, Artifact, sha256_file, ImagePreprocessing, IOSpec, LineageEntry, Manifest, TensorSpec, TextPreprocessing
from ..errors import ConfigError, InputError
from .torch_module import read_state_dict

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable JSON ({e}); restore the checkpoint's {p.name}") from e


def infer_task(config) -> str:
    from ..llm.families import is_causal_lm

    archs = config.architectures or []
    if is_causal_lm(config):
        return "text-generation"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    if any(a.endswith("ForImageClassification") for a in archs):
        return "image-classification"
    return "feature-extraction"


def text_io(input_names: list[str], task: str, width: int) -> IOSpec:
    out_name = "logits" if task == "text-classification" else "embeddings"
    return IOSpec(
        inputs=[TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in input_names],
        outputs=[TensorSpec(name=out_name, dtype="float32", shape=["batch", width])],
        preprocessing=None,
    )


def adopt_hf_folder(folder: Path, task: str | None = None) -> Artifact:
    """Describe a plain HF checkpoint folder (no manifest.json) as a source artifact.

    ``task`` overrides the task read from config.json (e.g. feature-extraction from a classifier).
    """
    from .._optional import require
    from .architectures import image_size, load_config, max_text_length, text_input_names

    require("train", purpose=f"reading the Hugging Face checkpoint {folder}", modules=("transformers",))
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise InputError(f"{folder}: config.json but no model.safetensors or pytorch_model.bin; this is not a complete checkpoint")
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    config = load_config(folder)
    task = task or infer_task(config)
    labels = None
    model: dict[str, Any] = {"pooling": None}
    if task == "text-generation":
        return _adopt_causal_lm(folder, config)
    if task in ("text-classification", "image-classification"):
        labels = [config.id2label[i] for i in sorted(config.id2label)]
    if task == "image-classification":
        pre = read_json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
        size = image_size(config, pre)
        channels = int(getattr(config, "num_channels", 3))
        io = IOSpec(
            inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", channels, size[0], size[1]])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", len(labels or [])])],
            preprocessing=ImagePreprocessing(
                size=list(size),
                channels=channels,
                mean=list(pre.get("image_mean", [0.5] * channels)),
                std=list(pre.get("image_std", [0.5] * channels)),
                scale=float(pre.get("rescale_factor", 1 / 255)),
            ),
        )
    else:
        tok_cfg = folder / "tokenizer_config.json"
        if not (tok_cfg.is_file() or (folder / "tokenizer.json").is_file()):
            raise InputError(f"{folder}: a text model without a tokenizer (tokenizer.json / tokenizer_config.json); save the tokenizer next to the weights")
        if task == "feature-extraction":
            pool_cfg = folder / "1_Pooling" / "config.json"
            if pool_cfg.is_file():
                pc = read_json(pool_cfg)
                model["pooling"] = "mean" if pc.get("pooling_mode_mean_tokens") else "cls" if pc.get("pooling_mode_cls_token") else "mean"
                modules = read_json(folder / "modules.json") if (folder / "modules.json").is_file() else []
                model["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
            else:
                model["pooling"] = "mean"
                model["normalize"] = False
            width = int(config.hidden_size)
        else:
            width = len(labels or [])
        io = text_io(text_input_names(config), task, width)
        io.preprocessing = TextPreprocessing(tokenizer=".", max_length=max_text_length(config))
    lineage = [LineageEntry(stage="source", config={"path": str(folder)})]
    # Hash the checkpoint's own files so that a changed weight file changes this manifest's
    # digest (recipe caches and lineage depend on it).
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}
    manifest = Manifest(format="hf", task=task, labels=labels, io=io, model=model, lineage=lineage, files=files)
    return Artifact(folder, manifest)


def _adopt_causal_lm(folder: Path, config) -> Artifact:
    """A decoder-only language model: tokens in, next-token logits out (``edgeopt generate`` runs it)."""
    from ..llm.families import check_family, is_causal_lm

    if not is_causal_lm(config):
        raise ConfigError(f"{folder}: --task text-generation needs a causal language model (architectures "
                          f"*ForCausalLM); config.json lists {', '.join(config.architectures or []) or 'none'}")
    check_family(config, folder)
    if not ((folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()):
        raise InputError(f"{folder}: a language model without a tokenizer (tokenizer.json / tokenizer_config.json); "
                         "save the tokenizer next to the weights")
    context = int(getattr(config, "max_position_embeddings", 0) or 2048)
    io = IOSpec(inputs=[TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
                outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", "sequence", int(config.vocab_size)])],
                preprocessing=TextPreprocessing(tokenizer=".", max_length=context))
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file()}
    manifest = Manifest(format="hf", task="text-generation", labels=None, io=io,
                        model={"pooling": None, "family": config.model_type, "context": context},
                        lineage=[LineageEntry(stage="source", config={"path": str(folder)})], files=files)
    return Artifact(folder, manifest)


def _wrap(module, task: str, input_names: list[str], pooling: Optional[str] = None, normalize: bool = False):
    import torch

    class TextClassifier(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m
            self.with_hidden = False  # distillation: also return every layer's hidden states

        def forward(self, *inputs):
            if self.with_hidden:
                o = self.model(**dict(zip(input_names, inputs)), output_hidden_states=True)
                return o.logits, o.hidden_states
            return self.model(**dict(zip(input_names, inputs))).logits

    class Embedder(torch.nn.Module):
        def __init__(self, m, pooling: str, normalize: bool):
            super().__init__()
            self.model, self.pooling, self.normalize = m, pooling, normalize

        def forward(self, *inputs):
            kw = dict(zip(input_names, inputs))
            hidden = self.model(**kw).last_hidden_state
            if self.pooling == "cls":
                emb = hidden[:, 0]
            else:
                mask = kw["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=-1)
            return emb

    class ImageClassifier(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    if task == "text-classification":
        return TextClassifier(module)
    if task == "feature-extraction":
        return Embedder(module, pooling or "mean", normalize)
    return ImageClassifier(module)


AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "feature-extraction": "AutoModel",
    "image-classification": "AutoModelForImageClassification",
}


def load_hf_module(artifact: Artifact, for_export: bool = False):
    """Load the checkpoint with its task head and wrap it so forward takes the IO inputs in order.

    Weights load as float32 whatever dtype they were saved in (transformers v5 would keep the
    checkpoint's bfloat16 / float16): exports, numeric checks and baselines all start from float32.
    ``for_export`` picks the eager attention implementation: its graph is the one
    ONNX Runtime's transformer optimizer fuses into Attention kernels.
    """
    import torch
    import transformers

    from .architectures import check_task_head, load_config

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder = artifact.path
    m = artifact.manifest
    if m.task == "text-generation":
        raise ConfigError(f"{folder} is a text-generation model: `edgeopt generate` runs it and `edgeopt export` "
                          "converts it; quantize, bench, serve and the compression stages do not support language models yet")
    if m.task not in AUTO_CLASSES:
        raise InputError(f"{folder}: task '{m.task}' is not supported for Hugging Face models; use text-classification, feature-extraction or image-classification")
    config = load_config(folder)
    check_task_head(config, m.task, folder)
    auto = getattr(transformers, AUTO_CLASSES[m.task])
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if for_export:
        kwargs["attn_implementation"] = "eager"
    try:
        if m.model.resized:
            # Structurally pruned: build from config, then resize layers to the saved weights.
            from .resize import load_resized

            model = auto.from_config(config, **kwargs)
            load_resized(model, read_state_dict(folder / "model.safetensors"))
        elif (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
            model = auto.from_pretrained(folder, config=config, use_safetensors=True, **kwargs)
        else:
            # Only a pickled .bin: build from config and load with weights_only=True (no code execution).
            model = auto.from_config(config, **kwargs)
            missing, unexpected = model.load_state_dict(read_state_dict(folder / "pytorch_model.bin"), strict=False)
            if missing:
                raise InputError(f"{folder}/pytorch_model.bin lacks weights for {missing[:3]}...; the checkpoint does not match config.json")
    except InputError:
        raise
    except Exception as e:
        raise InputError(_load_failure(folder, config, e)) from e
    model.eval()
    names = [t.name for t in m.io.inputs]
    return _wrap(model, m.task, names, m.model.pooling, m.model.normalize).eval()


def _load_failure(folder: Path, config, e: Exception) -> str:
    """Say what went wrong: a weights file that does not parse is truncated or corrupted; anything
    else (shapes that do not fit config.json, a transformers limitation) is reported as itself."""
    import transformers
    from safetensors import SafetensorError

    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, SafetensorError):
            return f"{folder}: cannot load the checkpoint: its safetensors weights do not parse ({msg}); the file is truncated or corrupted"
        cause = cause.__cause__ or cause.__context__
    return f"{folder}: cannot load the {config.model_type} checkpoint with transformers {transformers.__version__} ({type(e).__name__}: {msg[:300]})"


def load_tokenizer(artifact: Artifact):
    from transformers import AutoTokenizer

    pre = artifact.manifest.io.preprocessing
    assert isinstance(pre, TextPreprocessing)
    path = (artifact.path / pre.tokenizer).resolve()
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise InputError(f"{path}: cannot load the tokenizer ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
