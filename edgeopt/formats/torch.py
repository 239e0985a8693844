"""Plain PyTorch artifacts: a module factory (``package.module:function`` or a .py file shipped
inside the artifact) plus safetensors weights."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from .base import FormatHandler, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact


class TorchModel(ModelInfo):
    format: Literal["torch"] = "torch"
    factory: str  # "pkg.module:function", or "file.py:function" for a source file inside the artifact
    kwargs: dict[str, Any] = {}
    weights: str = "weights.safetensors"
    source: Optional[str] = None  # the factory's source file inside the artifact, if any
    resized: bool = False
    attention_heads: Optional[int] = None


class TorchHandler(FormatHandler):
    name = "torch"
    model = TorchModel
    runtime_requires = {"train": ("torch", "safetensors")}

    def model_files(self, artifact: "Artifact") -> list[Path]:
        return [artifact.path / artifact.manifest.model.weights]

    def load_runtime(self, artifact: "Artifact", *, threads=None, providers=None, session_config=None):
        from ..runtime.torch import TorchRuntime

        self.check_runtime_installed(artifact)
        return TorchRuntime(artifact, threads=threads)

    def describe(self, artifact: "Artifact") -> dict[str, Any]:
        info = artifact.manifest.model
        return {"factory": info.factory, "kwargs": info.kwargs or None, "weights": info.weights,
                "source": info.source}
