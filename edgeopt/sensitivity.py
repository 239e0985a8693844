"""Per-node quantization sensitivity: quantize one node at a time (ONNX Runtime dynamic int8, in the
target's format) and measure on real inputs how far the model's first output moves from fp32.

The ranking says which few nodes to keep in float (``edgeopt quantize --exclude-nodes``): a node
whose int8 version alone costs the most fidelity is the first candidate. Each variant is built in
a private temporary folder that is removed; nothing is written next to the artifact.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field

from .artifact import Artifact, load_artifact
from .errors import ConfigError
from .stages.registry import StageConfig


class SensitivityConfig(StageConfig):
    data: Optional[str] = None  # dataset reference; None: the artifact's sample inputs
    samples: int = Field(32, ge=1)
    target: Optional[str] = None  # None: the host's CPU target (its int8 format)
    per_channel: bool = True
    threads: Optional[int] = Field(None, ge=1)


class NodeSensitivity(BaseModel):
    node: str
    op_type: str
    error: float  # 1 - mean cosine similarity to fp32 (first output)
    cosine_min: float
    top1_agreement: Optional[float] = None  # classifiers


class SensitivityResult(BaseModel):
    artifact: str
    data: str
    samples: int
    target: str
    per_channel: bool
    full: NodeSensitivity  # every quantizable node at once (node "*")
    nodes: list[NodeSensitivity]  # most sensitive first
    seconds: float

    def worst(self, n: int) -> list[NodeSensitivity]:
        return self.nodes[:n]


def sensitivity(model: Artifact | str | Path, config: SensitivityConfig | None = None) -> SensitivityResult:
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    from .data import load_dataset
    from .metrics import predict, quality, sample_dataset
    from .models.preprocess import Preprocessor
    from .progress import progress
    from .runtime.onnxruntime import OrtRuntime
    from .stages.quantize import _pre_process, dynamic_options, require_fp32_onnx
    from .targets import get_target

    cfg = config or SensitivityConfig()
    art = model if isinstance(model, Artifact) else load_artifact(model)
    m = art.manifest
    require_fp32_onnx(art, "sensitivity quantizes ONNX graphs")
    target = get_target(cfg.target)
    if target.runtime == "tensorrt":
        raise ConfigError(f"target '{target.name}' runs TensorRT, whose int8 is static Q/DQ; per-node sensitivity "
                          "measures ONNX Runtime dynamic int8 (a CPU target)")
    pre = Preprocessor(art)
    data = (load_dataset(cfg.data, kind=pre.kind) if cfg.data else sample_dataset(art, cfg.samples)).take(cfg.samples)
    options = dynamic_options(target, cfg.per_channel)
    external = m.model.external_data
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeopt-sensitivity-") as tmp:
        work = Path(tmp)
        prepped = work / "fp32.onnx"
        _pre_process(art.path / m.model.file, prepped, external)
        graph = onnx.load(str(prepped), load_external_data=False).graph
        nodes = [(n.name, n.op_type) for n in graph.node if n.name and n.op_type in IntegerOpsRegistry]
        if not nodes:
            raise ConfigError(f"{art.path}: the graph has no node that dynamic int8 quantizes "
                              f"({', '.join(sorted(IntegerOpsRegistry))})")
        labels_task = m.task.endswith("classification")
        ref = predict(OrtRuntime(prepped, threads=cfg.threads), pre, data.samples, batch_size=8)[0]

        def measure(name: str, op_type: str, only: Optional[list[str]]) -> NodeSensitivity:
            out = work / "int8.onnx"
            quantize_dynamic(prepped, out, nodes_to_quantize=only, use_external_data_format=external, **options)
            got = predict(OrtRuntime(out, threads=cfg.threads), pre, data.samples, batch_size=8)[0]
            for f in work.glob("int8.onnx*"):
                f.unlink()
            q = quality(m.task, got, None, ref)
            return NodeSensitivity(node=name, op_type=op_type, error=1.0 - float(q["cosine_mean"]),
                                   cosine_min=float(q["cosine_min"]),
                                   top1_agreement=q.get("top1_agreement") if labels_task else None)

        full = measure("*", "all", None)
        results = []
        with progress("quantizing one node at a time", len(nodes)) as advance:
            for name, op_type in nodes:
                results.append(measure(name, op_type, [name]))
                advance(1)
    results.sort(key=lambda r: (-r.error, r.node))
    return SensitivityResult(artifact=str(art.path), data=data.source, samples=len(data), target=target.name,
                             per_channel=cfg.per_channel, full=full, nodes=results, seconds=time.perf_counter() - t0)
