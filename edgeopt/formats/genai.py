"""ONNX Runtime GenAI language-model folders: genai_config.json + model.onnx (+ model.onnx.data) +
the tokenizer, as ONNX Runtime GenAI's model builder writes them (decoder with a KV cache; fused
GroupQueryAttention). ``edgeopt generate`` runs them with ONNX Runtime GenAI."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from .base import FormatHandler, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact


class GenaiModel(ModelInfo):
    format: Literal["genai"] = "genai"
    file: str = "model.onnx"
    family: Optional[str] = None  # config.json's model_type
    context: Optional[int] = None  # tokens: prompt + generated
    builder: dict[str, Any] = {}  # what wrote it: onnxruntime-genai version, precision, execution provider
    quantization: Optional[dict[str, Any]] = None  # int4: algorithm, block size, accuracy level
    eos_token_ids: list[int] = []  # end-of-sequence ids (config.json and generation_config.json)
    adapter: Optional[dict[str, Any]] = None  # export --adapter: the LoRA kept unmerged (path, rank, modules)


def lora_ranks(adapter: dict) -> str:
    """'rank 8', or 'ranks 2-8' for an adapter with a rank_pattern."""
    ranks = adapter.get("ranks") or [adapter.get("r")]
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {min(ranks)}-{max(ranks)}"


class GenaiHandler(FormatHandler):
    name = "genai"
    model = GenaiModel
    runtime_requires = {"genai": ("onnxruntime_genai",)}

    def model_files(self, artifact: "Artifact") -> list[Path]:
        main = artifact.path / artifact.manifest.model.file
        return [main, *([main.with_name(main.name + ".data")] if main.with_name(main.name + ".data").is_file() else [])]

    def check_runtime_installed(self, artifact: "Artifact", *, llm: bool = False) -> None:
        """``llm``: the caller runs it with edgeopt.llm's generator (generate, serve, bench): ONNX Runtime
        GenAI must be installed (the tokenizer needs only tokenizers, and jinja2 for a chat template);
        other callers get it refused."""
        if not llm:
            from ..errors import ConfigError

            raise ConfigError(f"{artifact.path} is a language model (ONNX Runtime GenAI): `edgeopt generate`, `serve` "
                              "and `bench` run it; this command does not run language models")
        super().check_runtime_installed(artifact)

    def load_runtime(self, artifact: "Artifact", *, threads=None, providers=None, session_config=None):
        self.check_runtime_installed(artifact)

    def describe(self, artifact: "Artifact") -> dict[str, Any]:
        info = artifact.manifest.model
        b = info.builder
        out: dict[str, Any] = {"file": info.file, "family": info.family, "context": info.context,
                               "builder": (f"onnxruntime-genai {b.get('version')}, {b.get('precision')}, {b.get('execution_provider')}"
                                           if b else None)}
        if info.quantization:
            q = info.quantization
            out["quantization"] = f"{q.get('weights')} weights, {q.get('algorithm')}, block {q.get('block_size')}"
        if info.adapter:
            a = info.adapter
            out["adapter"] = (f"LoRA {lora_ranks(a)} unmerged ({', '.join(a.get('modules') or [])}), "
                              f"{((info.quantization or {}).get('adapter') or {}).get('weights', 'float')}")
        return {k: v for k, v in out.items() if v is not None}
