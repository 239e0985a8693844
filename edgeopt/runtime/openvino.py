"""ONNX artifacts run by Intel's OpenVINO instead of ONNX Runtime (``manifest.model.runtime: openvino``).

OpenVINO reads the ONNX file itself (ONNX Runtime's com.microsoft fusions included) and compiles it
for the CPU. ``edgeopt tune`` writes such artifacts where OpenVINO measured faster on the machine at
the same fidelity, typically with ``INFERENCE_PRECISION_HINT: bf16`` on an Intel CPU with AMX or
AVX-512 BF16. ``config`` holds OpenVINO CPU properties (strings, as its documentation names them).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError

# CPU properties tune may choose; others in a manifest are passed through as written
PRECISION_HINT = "INFERENCE_PRECISION_HINT"


def bf16_capable() -> bool:
    """Whether this CPU runs bfloat16 natively (OpenVINO's CPU plugin lists BF16 among its capabilities)."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed, or no CPU plugin
        return False


def version() -> Optional[str]:
    try:
        import openvino as ov

        return ov.get_version()
    except Exception:
        return None


class OpenVinoRuntime:
    """One compiled model; an infer request per calling thread (OpenVINO's requests are not
    thread-safe, and a server calls from its worker threads)."""

    def __init__(self, path: Path, threads: Optional[int] = None, output_names: Optional[list[str]] = None,
                 config: Optional[dict[str, str]] = None):
        import openvino as ov

        props = {"PERFORMANCE_HINT": "LATENCY", **{k: str(v) for k, v in (config or {}).items()}}
        if threads:
            props["INFERENCE_NUM_THREADS"] = str(int(threads))
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", props)
        except Exception as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InputError(f"{path}: OpenVINO {ov.get_version()} cannot load the model ({detail})") from e
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        by_name = {}
        for port in self.compiled.outputs:
            for name in port.get_names():
                by_name[name] = port
        self.output_names = output_names or [p.get_any_name() for p in self.compiled.outputs]
        missing = [n for n in self.output_names if n not in by_name]
        if missing:
            raise InputError(f"{path}: OpenVINO's compiled model has no output {missing[0]!r} "
                             f"(it has {', '.join(sorted(by_name))})")
        self._ports = [by_name[n] for n in self.output_names]
        self._local = threading.local()
        self.config = props

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def run(self, feeds: dict[str, np.ndarray], release_memory: bool = False) -> list[np.ndarray]:
        req = self._request()
        res = req.infer({n: np.ascontiguousarray(feeds[n]) for n in self.input_names})
        return [np.array(res[p], copy=True) for p in self._ports]  # the request's buffers are reused next call
