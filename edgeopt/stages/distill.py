"""Knowledge distillation: a student initialised from the teacher by dropping layers (or given),
trained on  alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE  (+ hidden-state MSE),
validated every epoch with the best checkpoint kept."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from ..artifact import Artifact
from ..errors import ConfigError, InputError
from ..outputs import check_output
from .registry import StageConfig, stage


class DistillConfig(StageConfig):
    kind: Literal["distill"] = "distill"
    data: str  # labelled training data
    val_data: Optional[str] = None
    eval_data: Optional[str] = None  # labelled test data for the before/after record
    student_layers: Optional[int] = Field(None, ge=1)
    student: Optional[str] = None  # HF config.json / checkpoint folder, or JSON factory kwargs for torch models
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    hidden_loss: bool = False
    hidden_weight: float = Field(1.0, ge=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    grad_accum: int = Field(1, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_student(self):
        if (self.student_layers is None) == (self.student is None):
            raise ValueError("give exactly one of --student-layers N or --student CONFIG_OR_CHECKPOINT")
        return self


def keep_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers ending at the top one: 6 -> 3 keeps [1, 3, 5]."""
    step = n_teacher / n_student
    return [int(round((i + 1) * step)) - 1 for i in range(n_student)]


@stage("distill")
def distill(teacher, out, config: DistillConfig) -> Artifact:
    import torch
    import torch.nn.functional as F

    from ..models import load_torch_model
    from ..models.preprocess import Preprocessor
    from ..train import TrainSettings, fit, seed_everything
    from ._torch_common import accuracy, collate_fn, labelled, params_of, save_module, torch_latency_ms, torch_parent

    cfg = config
    parent = torch_parent(teacher, "distill")
    check_output(out, parent, cfg)
    pm = parent.manifest
    seed_everything(cfg.seed)
    t_wrap = load_torch_model(parent).eval()
    pre = Preprocessor(parent)
    train, y = labelled(cfg.data, pre, pm.labels, "distillation")
    val = labelled(cfg.val_data, pre, pm.labels, "validation") if cfg.val_data else None
    evald = labelled(cfg.eval_data, pre, pm.labels, "evaluation") if cfg.eval_data else None

    s_wrap, mapping, updates = _make_student(parent, t_wrap, cfg)
    collate = collate_fn(pre)
    T, a = cfg.temperature, cfg.alpha
    is_hf = pm.format == "hf"
    for p in t_wrap.parameters():
        p.requires_grad_(False)

    def forward(w, x):
        o = w(*x)
        return o if isinstance(o, tuple) else (o, None)

    hidden = cfg.hidden_loss and is_hf
    t_wrap.with_hidden = s_wrap.with_hidden = hidden

    def batch_loss(net, idx):
        x = collate([train.samples[i] for i in idx])
        target = torch.as_tensor(y[idx], device=x[0].device)
        with torch.no_grad():
            t_logits, t_hidden = forward(t_wrap.to(x[0].device), x)
        s_logits, s_hidden = forward(net, x)
        kd = F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean") * T * T
        loss = a * kd + (1 - a) * F.cross_entropy(s_logits, target)
        if hidden and s_hidden is not None:
            mse = sum(F.mse_loss(s_hidden[i + 1], t_hidden[j + 1]) for i, j in enumerate(mapping)) / len(mapping)
            loss = loss + cfg.hidden_weight * mse
        return loss

    probe = (evald or val or (train, None))[0].samples
    teacher_rec = {"params": params_of(t_wrap), "latency_ms_b8": torch_latency_ms(t_wrap, pre, probe)}
    if evald is not None:
        teacher_rec["accuracy"] = accuracy(t_wrap, pre, evald[0].samples, evald[1])
    ev = (lambda m: accuracy(m, pre, val[0].samples, val[1])) if val is not None else None
    res = fit(s_wrap, len(train), batch_loss,
              TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, grad_accum=cfg.grad_accum),
              evaluate=ev, desc="distilling")
    t_wrap.with_hidden = s_wrap.with_hidden = False
    student_rec = {"params": params_of(s_wrap), "latency_ms_b8": torch_latency_ms(s_wrap, pre, probe)}
    if evald is not None:
        student_rec["accuracy"] = accuracy(s_wrap, pre, evald[0].samples, evald[1])
    metrics = {"teacher": teacher_rec, "student": student_rec, "layer_map": mapping, "history": res.history,
               "best_epoch": res.best_epoch, "val_accuracy": res.best_val_accuracy, "world_size": res.world_size,
               "speedup_b8_torch": teacher_rec["latency_ms_b8"] / student_rec["latency_ms_b8"]}
    if evald is not None:
        metrics["accuracy_retained"] = student_rec["accuracy"] / max(teacher_rec["accuracy"], 1e-9)
    return save_module(parent, s_wrap, out, stage="distill", config=cfg.model_dump(), metrics=metrics,
                       model_updates=updates)


def _make_student(parent: Artifact, t_wrap, cfg: DistillConfig):
    """(student wrapper, teacher layer index per student layer, manifest model updates)."""
    pm = parent.manifest
    if pm.format == "hf":
        from ..models.layouts import layout_for

        if cfg.student_layers is not None:
            s_wrap = copy.deepcopy(t_wrap)
            layout = layout_for(s_wrap.model)
            if layout is None:
                raise ConfigError(f"no layer layout for model type '{s_wrap.model.config.model_type}'; give --student CONFIG")
            layers = list(layout.layers())
            if cfg.student_layers > len(layers):
                raise ConfigError(f"--student-layers {cfg.student_layers}: the teacher has only {len(layers)} layers")
            mapping = keep_layers(len(layers), cfg.student_layers)
            layout.set_layers([layers[i] for i in mapping])
            for i, layer in enumerate(layout.layers()):  # keep per-layer indices consistent
                for m in layer.modules():
                    if hasattr(m, "layer_idx"):
                        m.layer_idx = i
            return s_wrap.train(), mapping, {}
        return _given_hf_student(parent, t_wrap, cfg)
    # torch factory models: the student is the same factory with other kwargs
    from ..models.torch_module import resolve_factory

    try:
        kwargs = json.loads(cfg.student) if cfg.student else None
    except ValueError as e:
        raise ConfigError(f"--student '{cfg.student}': for a torch model give factory kwargs as JSON, e.g. '{{\"width\": 16}}'") from e
    if not isinstance(kwargs, dict):
        raise ConfigError("for a torch model give --student as JSON factory kwargs, e.g. '{\"width\": 16}'")
    info = pm.model
    src = parent.path / info.source if info.source else None
    module = resolve_factory(info.factory, src)(**{**info.kwargs, **kwargs})
    return module.train(), [], {"kwargs": {**info.kwargs, **kwargs}}


def _given_hf_student(parent: Artifact, t_wrap, cfg: DistillConfig):
    import torch
    import transformers

    from ..models.hf import _wrap

    p = Path(cfg.student).expanduser()
    cfg_file = p / "config.json" if p.is_dir() else p
    if not cfg_file.is_file():
        raise InputError(f"--student {cfg.student}: no such config.json or checkpoint folder")
    scfg = transformers.AutoConfig.from_pretrained(cfg_file.parent if p.is_dir() else str(cfg_file))
    tcfg = t_wrap.model.config
    if getattr(scfg, "vocab_size", None) != getattr(tcfg, "vocab_size", None):
        raise ConfigError(f"--student {cfg.student}: vocabulary {getattr(scfg, 'vocab_size', '?')} differs from the teacher's "
                          f"{getattr(tcfg, 'vocab_size', '?')}; the student must share the teacher's tokenizer")
    scfg.num_labels = tcfg.num_labels
    scfg.id2label, scfg.label2id = tcfg.id2label, tcfg.label2id
    if p.is_dir() and any((p / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(p, config=scfg, ignore_mismatched_sizes=True,
                                                                                dtype=torch.float32)
    else:
        model = transformers.AutoModelForSequenceClassification.from_config(scfg, dtype=torch.float32)
    n_t, n_s = tcfg.num_hidden_layers, scfg.num_hidden_layers
    if n_s > n_t:
        raise ConfigError(f"--student has {n_s} layers, more than the teacher's {n_t}")
    if cfg.hidden_loss and scfg.hidden_size != tcfg.hidden_size:
        raise ConfigError("--hidden-loss needs the student's hidden size to equal the teacher's "
                          f"({scfg.hidden_size} vs {tcfg.hidden_size})")
    names = [t.name for t in parent.manifest.io.inputs]
    return _wrap(model, "text-classification", names).train(), keep_layers(n_t, n_s), {"resized": False}
