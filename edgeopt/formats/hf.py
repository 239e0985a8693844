"""Hugging Face checkpoint artifacts: config.json + safetensors (or a pickled .bin), run by PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import field_validator

from .base import FormatHandler, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact


class HfModel(ModelInfo):
    format: Literal["hf"] = "hf"
    pooling: Optional[Literal["mean", "cls"]] = None  # feature-extraction: how token states become one embedding
    normalize: bool = False  # feature-extraction: L2-normalised embeddings (sentence-transformers' Normalize)
    resized: bool = False  # structurally pruned: layers are smaller than config.json says
    attention_heads: Optional[int] = None  # heads kept in every layer after head pruning
    adapter: Optional[str] = None  # folder of the LoRA adapter a finetune also kept

    @field_validator("normalize", "resized", mode="before")
    @classmethod
    def _none_is_false(cls, v):  # merges before typed formats wrote "normalize": null
        return False if v is None else v


class HfHandler(FormatHandler):
    name = "hf"
    model = HfModel
    runtime_requires = {"train": ("torch", "transformers")}

    def model_files(self, artifact: "Artifact") -> list[Path]:
        return [f for pat in ("*.safetensors", "pytorch_model*.bin") for f in sorted(artifact.path.glob(pat))]

    def check_runtime_installed(self, artifact: "Artifact", *, llm: bool = False) -> None:
        """``llm``: the caller runs a text-generation artifact with edgeopt.llm's generator (generate, serve,
        bench), so only its modules are checked; other callers get a language model refused."""
        if artifact.manifest.task == "text-generation" and not llm:  # bench checks this before it starts
            from ..errors import ConfigError

            raise ConfigError(f"{artifact.path} is a text-generation model: `edgeopt generate`, `serve` and `bench` run "
                              "it and `edgeopt export` converts it; this command does not run language models")
        super().check_runtime_installed(artifact)  # torch and transformers, what the generator needs too

    def load_runtime(self, artifact: "Artifact", *, threads=None, providers=None, session_config=None):
        from ..runtime.torch import TorchRuntime

        self.check_runtime_installed(artifact)
        return TorchRuntime(artifact, threads=threads)

    def describe(self, artifact: "Artifact") -> dict[str, Any]:
        info = artifact.manifest.model
        out: dict[str, Any] = {"weights": ", ".join(f.name for f in self.model_files(artifact)) or None}
        if info.pooling:
            out["pooling"] = info.pooling + (", L2-normalised" if info.normalize else "")
        if info.resized:
            out["pruned"] = "structurally (layers resized)"
        if info.adapter:
            out["adapter"] = info.adapter
        return {k: v for k, v in out.items() if v is not None}
