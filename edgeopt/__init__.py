"""edgeopt: trained PyTorch / Hugging Face checkpoint -> fast, verified model on a device.

The public API is imported lazily: ``import edgeopt`` loads neither torch nor onnxruntime.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import (ConfigError, EdgeoptError, InputError, MissingDependencyError, StageError, TargetError,
                     ValidationError)

_LAZY = {
    "Artifact": "edgeopt.artifact",
    "Manifest": "edgeopt.artifact",
    "load_artifact": "edgeopt.artifact",
    "export": "edgeopt.stages.export",
    "ExportConfig": "edgeopt.stages.export",
    "quantize": "edgeopt.stages.quantize",
    "QuantizeConfig": "edgeopt.stages.quantize",
    "finetune": "edgeopt.stages.finetune",
    "FinetuneConfig": "edgeopt.stages.finetune",
    "bench": "edgeopt.bench.core",
    "BenchConfig": "edgeopt.bench.core",
    "load_recipe": "edgeopt.recipe",
    "run_recipe": "edgeopt.recipe",
    "get_target": "edgeopt.targets",
    "load_dataset": "edgeopt.data",
    "load_runtime": "edgeopt.runtime",
    "save_torch_artifact": "edgeopt.models.torch_module",
}

__all__ = ["__version__", "EdgeoptError", "ConfigError", "InputError", "StageError", "TargetError", "ValidationError",
           "MissingDependencyError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
