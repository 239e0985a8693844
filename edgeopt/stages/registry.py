"""The one list of stages: kind -> module, config class and function, loaded lazily.

The recipe runner and its validation, the CLI and the Python API (``edgeopt.export`` ...) all
read this table; adding a stage is one module plus one entry here. Nothing is imported until a
stage is used, so validating a recipe or listing stages loads no torch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import ConfigError


class StageConfig(BaseModel):
    """Base of every stage's config: typed, strict, versioned. ``version`` changes when a field's
    meaning changes, so lineage records and recipe caches written under another meaning differ."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        current = cls.model_fields["version"].default
        if v != current:
            raise ValueError(f"version {v} is not one this edgeopt knows; it writes and reads version {current} "
                             "(drop the key, or upgrade edgeopt)")
        return v


@dataclass(frozen=True)
class StageSpec:
    kind: str
    module: str
    config_name: str
    function_name: str
    summary: str
    needs_input: bool = True  # reads a parent artifact (finetune starts from a base model it is given)
    # extra -> import names it needs (None: every package of the extra); checked before the stage runs
    requires: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    @property
    def config(self) -> type[StageConfig]:
        return getattr(import_module(self.module), self.config_name)

    @property
    def function(self) -> Callable[..., Any]:
        return getattr(import_module(self.module), self.function_name)

    def check_installed(self) -> None:
        from .._optional import require

        for extra, modules in self.requires.items():
            require(extra, purpose=f"the {self.kind} stage", modules=modules)

    def run(self, parent, out, config):
        """The stage's artifact (a stage whose function returns a result describing it, like tune's,
        gives the artifact it wrote)."""
        res = self.function(parent, out, config)
        if isinstance(getattr(res, "artifact", None), str):
            from ..artifact import load_artifact

            return load_artifact(res.artifact)
        return res


_TRAIN = {"train": None}

STAGES: dict[str, StageSpec] = {s.kind: s for s in (
    StageSpec("finetune", "edgeopt.stages.finetune", "FinetuneConfig", "finetune",
              "fine-tune a checkpoint (full or LoRA) on labelled data", needs_input=False, requires=_TRAIN),
    StageSpec("merge", "edgeopt.stages.merge", "MergeConfig", "merge",
              "merge a PEFT adapter into its base, checked against the PEFT model", requires=_TRAIN),
    StageSpec("prune", "edgeopt.stages.prune", "PruneConfig", "prune",
              "unstructured or structured pruning, with optional recovery training", requires=_TRAIN),
    StageSpec("distill", "edgeopt.stages.distill", "DistillConfig", "distill",
              "distill a smaller student from a teacher", requires=_TRAIN),
    StageSpec("qat", "edgeopt.stages.qat", "QATConfig", "qat",
              "quantization-aware training (or torch-side PTQ) to a QDQ ONNX graph", requires=_TRAIN),
    StageSpec("export", "edgeopt.stages.export", "ExportConfig", "export",
              "PyTorch to ONNX, graph-optimized, checked against PyTorch", requires=_TRAIN),
    StageSpec("quantize", "edgeopt.stages.quantize", "QuantizeConfig", "quantize",
              "ONNX Runtime int8 post-training quantization", requires={"train": ("onnx",)}),
    StageSpec("quantize-weights", "edgeopt.llm.quantize", "WeightQuantizeConfig", "quantize_weights",
              "weight-only int4/int8 of a language model (MatMulNBits: RTN, HQQ, GPTQ), perplexity checked",
              requires={"llm": ("onnxruntime_genai",), "train": ("onnx", "transformers")}),
    StageSpec("tune", "edgeopt.tuning.search", "TuneConfig", "tune",
              "search int8 variants for the fastest within an accuracy budget (Pareto report)", requires={"train": ("onnx",)}),
    StageSpec("engine", "edgeopt.stages.engine", "EngineConfig", "engine",
              "TensorRT engine built on this GPU, checked against ONNX Runtime", requires={"engine": ("onnx",)}),
    StageSpec("bench", "edgeopt.bench.core", "BenchConfig", "bench",
              "latency, throughput, memory, size and accuracy side by side"),
)}


def get_stage(kind: str) -> StageSpec:
    try:
        return STAGES[kind]
    except KeyError:
        raise ConfigError(f"'{kind}' is not a stage; choose one of {', '.join(STAGES)}") from None


def stage(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a stage's public function: its extras are checked before it runs, from the Python API
    and the CLI alike, so a missing one is one line naming it, not an ImportError."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            get_stage(kind).check_installed()
            return fn(*args, **kwargs)

        return run

    return wrap
