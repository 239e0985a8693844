"""Quantization-aware training (and torch-side PTQ with the same observers), exported as a
QDQ ONNX graph whose Q/DQ follow TensorRT's rules: int8, symmetric, zero point 0."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..artifact import Artifact
from ..errors import ConfigError, ValidationError
from ..outputs import check_output
from .registry import StageConfig, stage


class QATConfig(StageConfig):
    kind: Literal["qat"] = "qat"
    data: str  # labelled training data (calibration uses it too)
    val_data: Optional[str] = None
    eval_data: Optional[str] = None
    train: bool = True  # False: calibrate only (torch-side PTQ)
    epochs: int = Field(1, ge=1)
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    calib_samples: int = Field(256, ge=1)
    calibration: Literal["max", "percentile"] = "max"
    percentile: float = Field(99.99, gt=50, le=100)
    target: Optional[str] = None  # recorded; QAT always emits TensorRT-style symmetric int8
    opset: int = Field(17, ge=13)
    # The ONNX graph vs its fake-quant PyTorch twin: ONNX Runtime's int8 kernels round differently,
    # so the export is held to agreement (top-1, cosine), with the max abs error recorded.
    min_onnx_top1_agreement: float = Field(0.95, ge=0, le=1)  # borderline inputs may flip: judge on many samples
    min_onnx_cosine: float = Field(0.99, ge=0, le=1)
    min_top1_agreement: float = Field(0.95, ge=0, le=1)  # int8 ONNX vs the fp32 parent, on eval_data
    max_accuracy_drop: Optional[float] = Field(None, ge=0)  # points, on eval_data; exceeded -> error
    seed: int = 0


@stage("qat")
def qat(model, out, config: QATConfig) -> Artifact:
    import numpy as np
    import torch

    from .. import distributed as D
    from ..models import load_torch_model
    from ..models.fakequant import insert_fake_quant, quant_state, set_calibrating
    from ..models.preprocess import Preprocessor
    from ..targets import get_target
    from ..train import TrainSettings, cross_entropy_loss, fit, seed_everything
    from ._torch_common import accuracy, collate_fn, labelled, torch_parent
    from .export import ExportConfig, export_module

    cfg = config
    stage = "qat" if cfg.train else "ptq-torch"
    parent = torch_parent(model, "quantize --qat" if cfg.train else "quantize --ptq static (torch)")
    check_output(out, parent, cfg)
    target = get_target(cfg.target)
    pm = parent.manifest
    seed_everything(cfg.seed)
    wrapper = load_torch_model(parent, for_export=True)
    pre = Preprocessor(parent)
    train, y = labelled(cfg.data, pre, pm.labels, "QAT" if cfg.train else "calibration")
    val = labelled(cfg.val_data, pre, pm.labels, "validation") if cfg.val_data else None
    evald = labelled(cfg.eval_data, pre, pm.labels, "evaluation") if cfg.eval_data else None
    fp32_acc = accuracy(wrapper, pre, evald[0].samples, evald[1]) if evald else None
    fp32 = load_torch_model(parent, for_export=True) if evald else None

    swapped = insert_fake_quant(wrapper, cfg.calibration, cfg.percentile)
    if not swapped:
        raise ConfigError(f"{parent.path}: no Linear or Conv2d layers to quantize")
    # Calibrate activation ranges on real samples before any training.
    collate = collate_fn(pre)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.permutation(len(train))[: cfg.calib_samples]
    set_calibrating(wrapper, True)
    with torch.no_grad():
        for i in range(0, len(idx), cfg.batch_size):
            wrapper(*collate([train.samples[j] for j in idx[i : i + cfg.batch_size]]))
    set_calibrating(wrapper, False)
    calib_acc = accuracy(wrapper, pre, evald[0].samples, evald[1]) if evald else None
    history = []
    if cfg.train:
        ev = (lambda m: accuracy(m, pre, val[0].samples, val[1])) if val is not None else None
        res = fit(wrapper, len(train), cross_entropy_loss(collate, list(train.samples), y),
                  TrainSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, warmup_ratio=0.05),
                  evaluate=ev, desc="QAT")
        history = res.history
    wrapper.eval()
    qat_acc = accuracy(wrapper, pre, evald[0].samples, evald[1]) if evald else None
    metrics = {"fake_quant": {**quant_state(wrapper), "calibration": cfg.calibration, "calib_samples": int(len(idx)),
                              "history": history},
               "eval": {"data": evald[0].source if evald else None, "parent_accuracy": fp32_acc,
                        "accuracy_after_calibration": calib_acc, "torch_accuracy": qat_acc}}
    if not D.is_main():
        D.barrier()
        from ..artifact import load_artifact

        return load_artifact(out)
    fmt = {"mode": stage, "target": target.name, "weight_type": "int8", "activation_type": "int8",
           "weight_symmetric": True, "activation_symmetric": True, "zero_point": 0, "per_channel": True,
           "layers": len(swapped)}
    check = (lambda a: _record_onnx_accuracy(a, evald, fp32, pre, cfg)) if evald is not None else None
    try:
        return export_module(parent, wrapper, out,
                             ExportConfig(opset=cfg.opset, check_data=cfg.eval_data or cfg.data, check_samples=128),
                             stage=stage, stage_config=cfg.model_dump(), metrics=metrics,
                             model_info={"precision": "int8", "quantization": fmt}, basic_only=True,
                             fidelity=(cfg.min_onnx_top1_agreement, cfg.min_onnx_cosine), after=check)
    finally:
        D.barrier()  # other ranks load the artifact only once it is final


def _record_onnx_accuracy(art: Artifact, evald, fp32, pre, cfg: QATConfig) -> None:
    """Accuracy of the exported QDQ graph in ONNX Runtime, and its agreement with fp32, recorded in
    the artifact's manifest before it is finalized and moved into place (a failure discards it)."""
    from ..metrics import predict, quality
    from ..runtime import load_runtime
    from ..runtime.torch import TorchRuntime

    ds, y = evald
    got = predict(load_runtime(art), pre, ds.samples, batch_size=16)[0]
    ref = predict(TorchRuntime(art, module=fp32), pre, ds.samples, batch_size=16)[0]
    q = quality(art.manifest.task, got, y, ref)
    m = art.manifest
    m.metrics["eval"].update(accuracy=q["accuracy"], top1_agreement=q["top1_agreement"], cosine_mean=q["cosine_mean"],
                             samples=q["samples"],
                             accuracy_drop_points=(m.metrics["eval"]["parent_accuracy"] - q["accuracy"]) * 100)
    drop = m.metrics["eval"]["accuracy_drop_points"]
    problem = None
    if q["top1_agreement"] < cfg.min_top1_agreement:
        problem = f"int8 ONNX agrees with fp32 on only {q['top1_agreement']:.3f} of {ds.source} (limit {cfg.min_top1_agreement})"
    elif cfg.max_accuracy_drop is not None and drop > cfg.max_accuracy_drop:
        problem = f"int8 ONNX accuracy is {drop:.2f} points below fp32 on {ds.source} (limit {cfg.max_accuracy_drop})"
    if problem:
        raise ValidationError(f"{problem}; train longer (--epochs) or calibrate with more samples")
