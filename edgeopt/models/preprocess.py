"""Turn raw samples into model inputs, from the artifact's preprocessing spec.

Shared by export checks, quantization calibration, bench and serve, so every
stage sees inputs prepared the same way.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..artifact import Artifact, ImagePreprocessing, TextPreprocessing
from ..errors import InputError


class Preprocessor:
    def __init__(self, artifact: Artifact):
        self.spec = artifact.manifest.io.preprocessing
        self.input_names = [t.name for t in artifact.manifest.io.inputs]
        self.kind = self.spec.kind if self.spec is not None else None
        self._tokenizer = None
        if isinstance(self.spec, TextPreprocessing):
            from .hf import load_tokenizer

            self._tokenizer = load_tokenizer(artifact)

    def __call__(self, samples, seq_len: Optional[int] = None) -> dict[str, np.ndarray]:
        if isinstance(self.spec, TextPreprocessing):
            return self.text(list(samples), seq_len)
        if isinstance(self.spec, ImagePreprocessing):
            return {self.input_names[0]: self.image(samples)}
        raise InputError("this artifact records no preprocessing; feed raw tensors by its IO spec instead")

    def text(self, texts: Sequence[str], seq_len: Optional[int] = None) -> dict[str, np.ndarray]:
        spec = self.spec
        assert isinstance(spec, TextPreprocessing)
        if seq_len:
            enc = self._tokenizer(list(texts), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
        else:
            enc = self._tokenizer(list(texts), padding="longest", truncation=True, max_length=spec.max_length, return_tensors="np")
        out = {}
        for name in self.input_names:
            if name in enc:
                out[name] = enc[name].astype(np.int64)
            elif name == "token_type_ids":
                out[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
            else:
                raise InputError(f"the tokenizer does not produce input '{name}' that the model needs")
        return out

    def image(self, images) -> np.ndarray:
        spec = self.spec
        assert isinstance(spec, ImagePreprocessing)
        x = np.asarray(images, dtype=np.float32)
        c = spec.channels
        h, w = spec.size
        if x.ndim == 3:  # (N,H,W): grey images
            x = x[:, None, :, :]
        elif x.ndim == 4 and x.shape[-1] == c and x.shape[1] != c:  # NHWC -> NCHW
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != c:
            raise InputError(f"images of shape {tuple(x.shape)} do not fit the model's {c}x{h}x{w} input")
        if x.shape[2:] != (h, w):
            x = _resize(x, h, w)
        x = x * spec.scale
        mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
        return ((x - mean) / std).astype(np.float32)


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an NCHW float batch (torch's interpolate, antialiased)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).numpy()
