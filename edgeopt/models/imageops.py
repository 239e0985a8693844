"""Image operations in numpy, equal to the torch ones edgeopt used before (no torch at serving time)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _aa_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of torch's antialiased bilinear weights along one axis.

    torch (aten/src/ATen/native/cpu/UpSampleKernel.cpp, ``_compute_weights_aa``; align_corners=False,
    no scale factor given): scale = in/out; the triangle filter's support is 1 input pixel when
    upsampling and ``scale`` pixels when downsampling (then its argument is divided by ``scale``),
    like PIL; output pixel i is centred on input coordinate scale*(i+0.5); the taps that fall inside
    the input are renormalised to sum to 1.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)  # int(): truncation toward zero, as the C++ cast
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        taps = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        total = taps.sum()
        if total != 0.0:
            taps = taps / total
        w[i, xmin:xmax] = taps
    w.setflags(write=False)  # cached: shared by every call
    return w


def resize_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize an NCHW float batch to (h, w): ``torch.nn.functional.interpolate(x, size=(h, w),
    mode="bilinear", align_corners=False, antialias=True)``, as separable weight matrices."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear expects an NCHW array, got shape {x.shape}")
    in_h, in_w = x.shape[2], x.shape[3]
    if h <= 0 or w <= 0 or in_h <= 0 or in_w <= 0:
        raise ValueError(f"cannot resize {in_h}x{in_w} to {h}x{w}")
    wh = _aa_bilinear_weights(in_h, h)  # (h, in_h)
    ww = _aa_bilinear_weights(in_w, w)  # (w, in_w)
    # rows then columns, in float64 for the accumulation: out[n,c] = wh @ x[n,c] @ ww.T
    out = np.einsum("hi,ncij->nchj", wh, x.astype(np.float64), optimize=True)
    out = np.einsum("nchj,wj->nchw", out, ww, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32)
