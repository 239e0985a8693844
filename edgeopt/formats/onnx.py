"""ONNX artifacts: model.onnx (+ model.onnx.data above 2 GiB), run by ONNX Runtime."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from .base import FormatHandler, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave headroom for the graph


class OnnxModel(ModelInfo):
    format: Literal["onnx"] = "onnx"
    file: str = "model.onnx"
    dtype: Optional[str] = None  # float32 | float16: the graph's weights (inputs/outputs stay float32)
    source_dtype: Optional[str] = None  # the checkpoint's saved dtype
    opset: Optional[int] = None
    exporter: Optional[str] = None
    optimization: dict[str, Any] = {}
    external_data: bool = False
    target: Optional[str] = None  # the target profile it was exported for (edgeopt export --target)
    quantization: Optional[dict[str, Any]] = None  # int8: mode, target, types, per-channel ...
    # ONNX Runtime session options it was tuned with (edgeopt tune); over the target's own
    session_config: dict[str, str] = {}
    # what runs the file: ONNX Runtime, or OpenVINO (edgeopt tune, where it measured faster) with its
    # CPU properties (e.g. INFERENCE_PRECISION_HINT: bf16)
    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    openvino_config: dict[str, str] = {}


class OnnxHandler(FormatHandler):
    name = "onnx"
    model = OnnxModel

    def model_files(self, artifact: "Artifact") -> list[Path]:
        info = artifact.manifest.model
        main = artifact.path / info.file
        return [main, *([main.with_name(main.name + ".data")] if info.external_data else [])]

    def check_runtime_installed(self, artifact: "Artifact") -> None:
        if artifact.manifest.model.runtime == "openvino":
            from .._optional import require

            require("openvino", purpose=f"running {artifact.path} (tuned for OpenVINO)")

    def load_runtime(self, artifact: "Artifact", *, threads=None, providers=None, session_config=None):
        from ..runtime.onnxruntime import OrtRuntime

        info = artifact.manifest.model
        if info.runtime == "openvino":
            self.check_runtime_installed(artifact)
            from ..runtime.openvino import OpenVinoRuntime

            return OpenVinoRuntime(artifact.path / info.file, threads=threads, config=info.openvino_config,
                                   output_names=[t.name for t in artifact.manifest.io.outputs])
        return OrtRuntime(artifact.path / info.file, threads=threads, providers=providers,
                          output_names=[t.name for t in artifact.manifest.io.outputs],
                          session_config={**(session_config or {}), **info.session_config} or None)

    def describe(self, artifact: "Artifact") -> dict[str, Any]:
        info = artifact.manifest.model
        out: dict[str, Any] = {"file": info.file + (" (+ external data)" if info.external_data else ""),
                               "opset": info.opset, "exporter": info.exporter,
                               "optimization": info.optimization.get("level")}
        if info.runtime != "onnxruntime":
            out["runtime"] = info.runtime + "".join(f", {k}={v}" for k, v in info.openvino_config.items())
        if info.quantization:
            q = info.quantization
            out["quantization"] = (f"{q.get('mode')} for {q.get('target')}: weights {q.get('weight_type')}"
                                   f"{', per-channel' if q.get('per_channel') else ''}, activations {q.get('activation_type')}")
        return {k: v for k, v in out.items() if v is not None}


def save_onnx(model, path: Path) -> None:
    """Save a ModelProto as this format's file: external data (``NAME.data`` beside it) when it would
    not fit protobuf's 2 GiB limit; no stale shape annotations; every op domain declared."""
    import onnx

    del model.graph.value_info[:]  # stale shapes after fusion break later shape inference (quantization)
    domains = {o.domain for o in model.opset_import}
    for domain in {n.domain for n in model.graph.node} - domains - {"", "ai.onnx"}:
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    if model.ByteSize() > EXTERNAL_DATA_BYTES or any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
