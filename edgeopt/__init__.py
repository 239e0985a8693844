"""edgeopt: trained PyTorch / Hugging Face checkpoint -> fast, verified model on a device.

The public API is imported lazily: ``import edgeopt`` loads neither torch nor onnxruntime.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import (ConfigError, EdgeoptError, InputError, MissingDependencyError, StageError, TargetError,
                     ValidationError)
from .stages.registry import STAGES as _STAGES  # the table only: no stage module is imported

# Stage functions and their configs (edgeopt.export, edgeopt.ExportConfig, ...) come from the
# stage registry, the one list of stages; the rest of the public API is listed here.
_LAZY = {
    "Artifact": "edgeopt.artifact",
    "Manifest": "edgeopt.artifact",
    "load_artifact": "edgeopt.artifact",
    "BenchReport": "edgeopt.bench.core",
    "load_recipe": "edgeopt.recipe",
    "run_recipe": "edgeopt.recipe",
    "get_target": "edgeopt.targets",
    "load_dataset": "edgeopt.data",
    "load_runtime": "edgeopt.runtime",
    "compare": "edgeopt.compare",
    "CompareConfig": "edgeopt.compare",
    "CompareResult": "edgeopt.compare",
    "save_torch_artifact": "edgeopt.models.torch_module",
    "generate": "edgeopt.llm.generate",
    "GenerateConfig": "edgeopt.llm.generate",
    "GenerateResult": "edgeopt.llm.generate",
}


def _stage_api() -> dict[str, tuple[str, str]]:
    api = {}
    for spec in _STAGES.values():
        api[spec.kind.replace("-", "_")] = (spec.module, spec.function_name)  # quantize-weights: quantize_weights
        api[spec.config_name] = (spec.module, spec.config_name)
    return api


__all__ = ["__version__", "EdgeoptError", "ConfigError", "InputError", "StageError", "TargetError", "ValidationError",
           "MissingDependencyError", *_LAZY, *_stage_api()]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    stage_api = _stage_api()
    if name in stage_api:
        module, attr = stage_api[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
