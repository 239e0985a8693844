"""The decoder-only Hugging Face families edgeopt runs (``config.json``'s ``model_type``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

# model_type -> family name shown to users (SmolLM checkpoints are model_type llama)
FAMILIES: dict[str, str] = {
    "llama": "Llama (and SmolLM)",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "phi3": "Phi-3",
    "gemma": "Gemma",
    "gemma2": "Gemma 2",
}


def is_causal_lm(config) -> bool:
    """Whether config.json's architectures name a causal-LM head (``*ForCausalLM``, or another class
    transformers registers for causal LM, such as GPT2LMHeadModel)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal
    except ImportError:  # pragma: no cover - transformers moved it
        return False
    names = {n for v in causal.values() for n in ([v] if isinstance(v, str) else v)}
    return any(a in names and not a.startswith("Bert") for a in archs)


def check_family(config, folder: Path) -> str:
    """The config's model_type, if edgeopt supports its family; else a ConfigError naming those it does."""
    kind = getattr(config, "model_type", None) or "?"
    if kind not in FAMILIES:
        raise ConfigError(f"{folder}: '{kind}' language models are not supported; supported families: "
                          f"{', '.join(FAMILIES.values())} (model_type {', '.join(FAMILIES)})")
    return kind
