"""TensorRT engine artifacts: a serialized engine bound to its TensorRT version and GPU, the ONNX
it was built from (to rebuild it on another machine, or compare it layer by layer), and its key.

Two roads run it: TensorRT's own runtime (``road: tensorrt``, model.engine) or ONNX Runtime's
TensorRT execution provider (``road: onnxruntime``, an EP-context model that points at the engine).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..tensorrt.key import EngineKey
from .base import FormatHandler, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact


class TrtModel(ModelInfo):
    format: Literal["trt"] = "trt"
    road: Literal["tensorrt", "onnxruntime"] = "tensorrt"
    file: str = "model.engine"  # the engine (tensorrt road) or the EP-context model (onnxruntime road)
    engine_files: list[str] = []  # further files the runtime reads (the EP's engine and profile caches)
    source: str = "source/model.onnx"  # the ONNX the engine was built from
    source_external_data: bool = False
    key: EngineKey
    layers: dict[str, int] = {}  # precision -> number of engine layers running in it
    build: dict[str, Any] = {}  # builder road (flags | typed), workspace, timing cache, quantizer, target ...


class TrtHandler(FormatHandler):
    name = "trt"
    model = TrtModel

    def model_files(self, artifact: "Artifact") -> list[Path]:
        info = artifact.manifest.model
        return [artifact.path / info.file, *(artifact.path / f for f in info.engine_files)]

    def source_onnx(self, artifact: "Artifact") -> Path:
        return artifact.path / artifact.manifest.model.source

    def check_runtime_installed(self, artifact: "Artifact") -> None:
        if artifact.manifest.model.road == "tensorrt":
            from ..tensorrt.machine import import_tensorrt

            import_tensorrt(f"running the engine {artifact.path}")

    def load_runtime(self, artifact: "Artifact", *, threads=None, providers=None, session_config=None):
        self.check_runtime_installed(artifact)
        if artifact.manifest.model.road == "onnxruntime":
            from ..tensorrt.ort_ep import OrtTrtRuntime

            return OrtTrtRuntime(artifact)
        from ..runtime.tensorrt import TrtRuntime

        return TrtRuntime(artifact)

    def describe(self, artifact: "Artifact") -> dict[str, Any]:
        from ..tensorrt.profiles import format_profile

        info = artifact.manifest.model
        k = info.key
        compat = [x for x in ("version-compatible" if k.version_compatible else "",
                              "hardware-compatible (ampere+)" if k.hardware_compat == "ampere+" else "") if x]
        layers = ", ".join(f"{n} {p}" for p, n in sorted(info.layers.items(), key=lambda kv: -kv[1]))
        return {"engine": f"{info.file} ({'TensorRT runtime' if info.road == 'tensorrt' else 'ONNX Runtime TensorRT EP'})",
                "built for": f"TensorRT {k.tensorrt} on {k.gpu} (sm_{k.compute_capability.replace('.', '')})"
                             + (f", CUDA {k.cuda}" if k.cuda else ""),
                "portability": ", ".join(compat) or "this TensorRT version and GPU architecture only",
                "profiles": format_profile(k.profiles), "layers": layers or None, "source": info.source}
