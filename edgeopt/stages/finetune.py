"""Fine-tune a classifier on labelled data: a Hugging Face text model (full, or LoRA with the
classification head in ``modules_to_save``), or a plain PyTorch image model from a factory.

For LoRA the artifact holds the merged checkpoint (loads without peft) and the adapter
itself in ``adapter/``. Test accuracy is measured on the best-validation weights.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..artifact import (Artifact, ImagePreprocessing, IOSpec, Manifest, TensorSpec, TextPreprocessing,
                        finalize, load_artifact, write_artifact)
from ..errors import ConfigError, InputError
from ..outputs import check_output
from .registry import StageConfig, stage


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"])


class FinetuneConfig(StageConfig):
    kind: Literal["finetune"] = "finetune"
    train_data: str
    val_data: Optional[str] = None
    test_data: Optional[str] = None
    labels: Optional[list[str]] = None  # default: sorted distinct labels of train_data
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    seed: int = 0
    max_length: int = Field(128, ge=8)
    lora: Optional[LoraSettings] = None
    # Plain PyTorch image models: factory "module:function" (source: a .py file holding it) + preprocessing.
    factory: Optional[str] = None
    source: Optional[str] = None
    factory_kwargs: dict = Field(default_factory=dict)
    image: Optional[ImagePreprocessing] = None

    @model_validator(mode="after")
    def _factory_needs_image(self):
        if self.factory and self.image is None:
            raise ValueError("a factory model needs 'image' preprocessing (size, channels, mean, std, scale)")
        return self


@stage("finetune")
def finetune(model: Optional[Artifact | str | Path], out: str | Path, config: FinetuneConfig) -> Artifact:
    from ..data import load_dataset

    cfg = config
    if cfg.factory:
        check_output(out, cfg)
        return _finetune_factory(out, cfg)
    if model is None:
        raise ConfigError("finetune needs a base model (a Hugging Face folder) or a 'factory'")
    base = model if isinstance(model, Artifact) else load_artifact(model)
    check_output(out, base, cfg)
    if base.manifest.format != "hf" or not isinstance(base.manifest.io.preprocessing, TextPreprocessing):
        raise ConfigError(f"{base.path}: finetune takes a Hugging Face text model here (got {base.manifest.format}, {base.manifest.task})")
    train = load_dataset(cfg.train_data, kind="text")
    labels = cfg.labels or sorted({str(x) for x in (train.labels or [])})
    y_train = train.label_indices(labels)
    val = load_dataset(cfg.val_data, kind="text") if cfg.val_data else None
    test = load_dataset(cfg.test_data, kind="text") if cfg.test_data else None
    return _finetune_text(base, out, cfg, labels, train, y_train, val, test)


def _finetune_text(base: Artifact, out, cfg: FinetuneConfig, labels, train, y_train, val, test) -> Artifact:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from ..models.hf import adopt_hf_folder, load_tokenizer
    from ..models.tokenizer import save_tokenizer, tokenizer_folder
    from ..train import TrainSettings, cross_entropy_loss, fit, seed_everything

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    seed_everything(cfg.seed)
    tok = load_tokenizer(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base.path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        use_safetensors=True, ignore_mismatched_sizes=True,  # a new label set gets a freshly initialised head
        dtype=torch.float32)  # train in float32 whatever dtype the checkpoint was saved in
    trained = model
    if cfg.lora:
        from ._torch_common import import_peft

        import_peft()
        from peft import LoraConfig, TaskType, get_peft_model

        trained = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                   lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules))

    def collate(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        return dict(enc)

    def accuracy(m, ds) -> float:
        y = ds.label_indices(labels)
        preds = []
        for i in range(0, len(ds), 64):
            preds.append(m(**collate(ds.samples[i : i + 64])).logits.argmax(-1).numpy())
        return float((np.concatenate(preds) == y).mean())

    t0 = time.perf_counter()
    res = fit(trained, len(train), cross_entropy_loss(collate, train.samples, y_train),
              TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed),
              evaluate=(lambda m: accuracy(m, val)) if val is not None else None, desc="fine-tuning")
    train_s = time.perf_counter() - t0

    with write_artifact(out, base, cfg) as tmp, torch.no_grad():
        metrics = {"train_seconds": train_s, "best_epoch": res.best_epoch, "history": res.history,
                   "val_accuracy": res.best_val_accuracy}
        if cfg.lora:
            trained.save_pretrained(tmp / "adapter")
            _point_adapter_at(tmp / "adapter", base.path, labels)
            merged = trained.merge_and_unload()
        else:
            merged = trained
        if test is not None:
            metrics["test_accuracy"] = accuracy(merged, test)
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer_folder(base), tmp)
        adopted = adopt_hf_folder(tmp)
        manifest = base.manifest.child(stage="finetune", config=cfg.model_dump(), format="hf", task="text-classification",
                                       labels=labels, io=adopted.manifest.io, model={"pooling": None, "adapter": "adapter" if cfg.lora else None})
        manifest.metrics = metrics
        manifest.metrics["params"] = int(sum(p.numel() for p in merged.parameters()))
        manifest = finalize(tmp, manifest)
    return Artifact(Path(out).expanduser().resolve(), manifest)


def _point_adapter_at(adapter_dir: Path, base_path: Path, labels: list[str]) -> None:
    """Record the base checkpoint and the head's labels next to the adapter (for `edgeopt merge`)."""
    import json

    p = adapter_dir / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = str(base_path)
    p.write_text(json.dumps(cfg, indent=2))
    (adapter_dir / "labels.json").write_text(json.dumps(labels))


def _finetune_factory(out, cfg: FinetuneConfig) -> Artifact:
    import torch

    from ..data import load_dataset
    from ..models.preprocess import Preprocessor
    from ..models.torch_module import resolve_factory, save_torch_artifact
    from ..train import TrainSettings, cross_entropy_loss, fit, seed_everything

    source = Path(cfg.source).expanduser() if cfg.source else None
    if source is not None and not source.is_file():
        raise InputError(f"{cfg.source}: no such source file for factory {cfg.factory}")
    seed_everything(cfg.seed)
    module = resolve_factory(cfg.factory, source)(**cfg.factory_kwargs)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"factory {cfg.factory} returned {type(module).__name__}, not a torch.nn.Module")
    train = load_dataset(cfg.train_data, kind="image")
    labels = cfg.labels or [str(x) for x in sorted({x for x in (train.labels or [])})]
    y_train = train.label_indices(labels)
    val = load_dataset(cfg.val_data, kind="image") if cfg.val_data else None
    test = load_dataset(cfg.test_data, kind="image") if cfg.test_data else None
    img = cfg.image
    io = IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", img.channels, *img.size])],
                outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", len(labels)])], preprocessing=img)
    pre = Preprocessor(Artifact(Path("."), Manifest(format="torch", task="image-classification", labels=labels, io=io,
                                                   model={"factory": cfg.factory})))

    def collate(images):
        return (torch.from_numpy(pre.image(np.stack(images))),)

    def accuracy(m, ds) -> float:
        x = torch.from_numpy(pre.image(ds.samples))
        return float((m(x).argmax(-1).numpy() == ds.label_indices(labels)).mean())

    t0 = time.perf_counter()
    res = fit(module, len(train), cross_entropy_loss(collate, list(train.samples), y_train),
              TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, weight_decay=1e-4),
              evaluate=(lambda m: accuracy(m, val)) if val is not None else None, desc="training")
    metrics = {"train_seconds": time.perf_counter() - t0, "best_epoch": res.best_epoch, "history": res.history,
               "val_accuracy": res.best_val_accuracy, "params": int(sum(p.numel() for p in module.parameters()))}
    with torch.no_grad():
        if test is not None:
            metrics["test_accuracy"] = accuracy(module, test)
    return save_torch_artifact(module, out, factory=cfg.factory, task="image-classification", io=io, labels=labels,
                               source_file=source, kwargs=cfg.factory_kwargs, stage="finetune",
                               config=cfg.model_dump(), metrics=metrics)
