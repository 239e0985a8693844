"""One inference interface over ONNX Runtime sessions and PyTorch modules (TensorRT next).

Used by export checks, quantization fidelity, bench and serve. Each format's handler
(``edgeopt.formats``) says which runtime runs it.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from ..artifact import Artifact


class Runtime(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def load_runtime(artifact: Artifact, threads: Optional[int] = None, providers: Optional[list[str]] = None,
                 target: Optional[str] = None) -> Runtime:
    """The runtime for an artifact; a target supplies default threads, providers and session options."""
    fmt = artifact.manifest.format
    session_config: dict[str, str] = {}
    if target is not None:
        from ..targets import get_target

        spec = get_target(target)
        threads = threads or spec.threads
        session_config = dict(spec.session_config)
        if providers is None:
            import onnxruntime as ort

            available = set(ort.get_available_providers())
            providers = [p for p in spec.providers if p in available] or ["CPUExecutionProvider"]
    from ..formats import get_handler

    return get_handler(fmt).load_runtime(artifact, threads=threads, providers=providers, session_config=session_config)
