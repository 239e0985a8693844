"""Fake quantization for QAT and torch-side PTQ, following TensorRT's int8 rules:
symmetric, zero point 0; weights per output channel, activations per tensor.

``torch.fake_quantize_per_{channel,tensor}_affine`` export as ONNX QuantizeLinear /
DequantizeLinear pairs, so the trained model leaves as a QDQ graph that ONNX Runtime and
TensorRT both consume.
"""
from __future__ import annotations

import torch
from torch import nn

QMIN, QMAX = -128, 127


class QuantInput(nn.Module):
    """Observes |x| during calibration (max or a percentile), then fake-quantizes per tensor."""

    def __init__(self, method: str = "max", percentile: float = 99.99):
        super().__init__()
        self.method, self.percentile = method, percentile
        self.register_buffer("amax", torch.tensor(0.0))
        self.calibrating = False
        self.enabled = True

    def forward(self, x):
        if self.calibrating:
            a = x.detach().abs().float()
            if self.method == "percentile":
                flat = a.flatten()
                k = max(1, int(flat.numel() * self.percentile / 100))
                v = flat.kthvalue(k).values if flat.numel() > 1 else flat.max()
            else:
                v = a.max()
            self.amax.copy_(torch.maximum(self.amax, v))
            return x
        if not self.enabled or self.amax <= 0:
            return x
        scale = (self.amax / QMAX).clamp(min=1e-8).float()
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, QMIN, QMAX)


def _weight_fq(w: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, w.dim()))
    scale = (w.detach().abs().amax(dim=dims) / QMAX).clamp(min=1e-8).float()
    zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, QMIN, QMAX)


class QuantLinear(nn.Linear):
    def forward(self, x):
        return nn.functional.linear(self.input_quant(x), _weight_fq(self.weight) if self.enabled else self.weight, self.bias)


class QuantConv2d(nn.Conv2d):
    def forward(self, x):
        w = _weight_fq(self.weight) if self.enabled else self.weight
        return self._conv_forward(self.input_quant(x), w, self.bias)


def insert_fake_quant(model: nn.Module, method: str = "max", percentile: float = 99.99,
                      skip: tuple[str, ...] = ()) -> list[str]:
    """Swap every nn.Linear / nn.Conv2d (except names containing one of ``skip``) for its
    fake-quant twin, in place (weights are shared, not copied)."""
    swapped = []
    for name, mod in list(model.named_modules()):
        if any(s in name for s in skip) or type(mod) not in (nn.Linear, nn.Conv2d):
            continue
        mod.__class__ = QuantLinear if isinstance(mod, nn.Linear) else QuantConv2d
        mod.input_quant = QuantInput(method, percentile).to(mod.weight.device)
        mod.enabled = True
        swapped.append(name)
    return swapped


def set_calibrating(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, QuantInput):
            m.calibrating = on


def quant_state(model: nn.Module) -> dict:
    amax = [float(m.amax) for m in model.modules() if isinstance(m, QuantInput)]
    return {"quantized_layers": len(amax), "uncalibrated": sum(1 for a in amax if a <= 0)}
