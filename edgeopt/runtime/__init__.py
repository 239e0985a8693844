"""One inference interface over ONNX Runtime sessions, PyTorch modules and TensorRT engines.

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


def load_runtime(artifact: Artifact, threads: Optional[int] = None, providers: Optional[list] = None,
                 target: Optional[str] = None) -> Runtime:
    """The runtime for an artifact; a target supplies default threads, providers and session options.

    On a TensorRT target (gpu-server, jetson-*) an ONNX artifact runs as a TensorRT engine built
    here on first use and cached (``edgeopt.tensorrt.cache``) when TensorRT's Python bindings are
    installed, else through ONNX Runtime's TensorRT EP with the same profiles and an engine cache."""
    fmt = artifact.manifest.format
    session_config: dict[str, str] = {}
    if target is not None:
        from ..targets import get_target

        spec = get_target(target)
        threads = threads or spec.threads
        session_config = dict(spec.session_config)
        if spec.runtime == "tensorrt" and spec.engine.policy == "build-on-device" and fmt in ("onnx", "trt") and providers is None:
            from .._optional import installed

            if installed("tensorrt"):
                from ..tensorrt.cache import engine_for

                artifact = engine_for(artifact, spec.name)
                fmt = artifact.manifest.format
        if providers is None and fmt == "onnx":
            import onnxruntime as ort

            available = set(ort.get_available_providers())
            providers = [_with_options(p, spec, artifact) for p in spec.providers if p in available] or ["CPUExecutionProvider"]
    from ..formats import get_handler

    return get_handler(fmt).load_runtime(artifact, threads=threads, providers=providers, session_config=session_config)


def _with_options(provider: str, spec, artifact: Artifact):
    """A provider with the target's options; the TensorRT EP also gets the profiles and engine and
    timing caches that the native road uses."""
    options = dict(spec.provider_options.get(provider, {}))
    if provider == "TensorrtExecutionProvider":
        from ..stages.engine import profile_for
        from ..tensorrt.cache import cache_root, default_precision
        from ..tensorrt.ort_ep import ep_options

        cache = cache_root(spec) / "onnxruntime"
        cache.mkdir(parents=True, exist_ok=True)
        precision = default_precision(artifact, spec)
        options = ep_options(profile_for(artifact, spec.name, []), precision, engine_cache=cache, timing_cache=cache,
                             graph_int8=precision == "best", base=options)
    return (provider, options) if options else provider
