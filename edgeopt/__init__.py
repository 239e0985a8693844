"""edgeopt: trained PyTorch / Hugging Face checkpoint -> fast, verified model on a device.

The public API is imported lazily: ``import edgeopt`` loads neither torch nor onnxruntime.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import (ConfigError, EdgeoptError, InputError, MissingDependencyError, StageError, TargetError,
                     ValidationError)

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
    "save_torch_artifact": "edgeopt.models.torch_module",
}


def _stage_api() -> dict[str, tuple[str, str]]:
    from .stages.registry import STAGES

    api = {}
    for spec in STAGES.values():
        api[spec.kind] = (spec.module, spec.function_name)
        api[spec.config_name] = (spec.module, spec.config_name)
    return api


_STAGE_NAMES = ("finetune", "merge", "prune", "distill", "qat", "export", "quantize", "bench", "FinetuneConfig",
                "MergeConfig", "PruneConfig", "DistillConfig", "QATConfig", "ExportConfig", "QuantizeConfig", "BenchConfig")
__all__ = ["__version__", "EdgeoptError", "ConfigError", "InputError", "StageError", "TargetError", "ValidationError",
           "MissingDependencyError", *_LAZY, *_STAGE_NAMES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    stage_api = _stage_api()
    if name in stage_api:
        module, attr = stage_api[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
