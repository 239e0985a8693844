"""One inference interface over ONNX Runtime sessions and PyTorch modules.

Used by export checks, quantization fidelity, bench and serve.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from ..artifact import Artifact
from ..errors import InputError


class Runtime(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def load_runtime(artifact: Artifact, threads: Optional[int] = None, providers: Optional[list[str]] = None) -> Runtime:
    fmt = artifact.manifest.format
    if fmt == "onnx":
        from .onnxruntime import OrtRuntime

        return OrtRuntime(artifact.path / artifact.manifest.model["file"], threads=threads, providers=providers,
                          output_names=[t.name for t in artifact.manifest.io.outputs])
    if fmt in ("hf", "torch"):
        from .torch import TorchRuntime

        return TorchRuntime(artifact, threads=threads)
    raise InputError(f"{artifact.path}: no runtime for format '{fmt}' on this machine")
