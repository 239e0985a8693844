"""TensorRT: engine builds for TensorRT 8.6-10.x (builder-flag precision) and 11.x (strongly typed
networks), engine keys, optimization profiles, the engine runtime, and ONNX Runtime's TensorRT EP road.

Nothing here imports tensorrt at module load: the pure logic (profiles, keys, Q/DQ checks, layer
precisions) runs and is tested anywhere; the builder and runtime import it when used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..artifact import Artifact


def layer_outputs(artifact: "Artifact", feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
    """Every float tensor of an engine artifact on ``feeds`` (Polygraphy's ``--trt-outputs mark all``):
    an engine is rebuilt from the artifact's ONNX source with the same profile and precision and
    every layer output marked, then run once. Marking outputs stops some fusions, so this engine's
    numbers can differ slightly from the deployed one; it locates divergence, it does not time it."""
    import tempfile
    from pathlib import Path

    from ..runtime.tensorrt import TrtRuntime
    from .build import BuildRequest, build_engine

    info = artifact.manifest.model
    with tempfile.TemporaryDirectory(prefix="edgeopt-layers-") as tmp:
        result = build_engine(BuildRequest(onnx=Path(artifact.path) / info.source, precision=info.precision,
                                           profile=info.key.profiles, workdir=Path(tmp), mark_all=True,
                                           target=info.build.get("target", "gpu-server")))
        rt = TrtRuntime(artifact, engine_bytes=result.engine, all_outputs=True)
        return dict(zip(rt.output_names, rt.run(feeds)))
