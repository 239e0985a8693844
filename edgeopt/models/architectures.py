"""Hugging Face architecture specifics, kept out of the generic loading and export code.

Sizes and input names come from transformers' own config classes: AutoConfig maps each family's
attribute names (DistilBERT's ``dim`` / ``n_heads``) to ``hidden_size`` / ``num_attention_heads``.
What transformers cannot say, which ONNX Runtime fusions fit an architecture's graph, is the
table below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import InputError

# HF model_type -> onnxruntime.transformers optimizer model_type whose fusion patterns match our
# torchscript export of that architecture (tests/test_architectures.py checks each fuses and keeps
# its numerics). BERT, DistilBERT, RoBERTa, XLM-R, ELECTRA and ALBERT get every fusion, Attention
# included; the others get the LayerNorm / SkipLayerNorm / Gelu ones only, as their attention
# (relative positions; ViT's scale-by-Mul with no mask) matches none of ONNX Runtime's patterns.
# Architectures not listed get ONNX Runtime's basic optimizations.
ORT_FUSION = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
    "mpnet": "bert", "albert": "bert", "deberta-v2": "bert", "modernbert": "bert",
    "vit": "vit", "deit": "vit", "dinov2": "vit",
    "swin": "swin",
}

# transformers' Auto* mapping (in transformers.models.auto.modeling_auto) that has a head per task
TASK_MAPPINGS = {
    "text-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "feature-extraction": "MODEL_MAPPING_NAMES",
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


def load_config(folder: Path):
    """The checkpoint's transformers config; a model_type transformers does not know is named as such."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from .hf import read_json

    raw = read_json(folder / "config.json")
    model_type = raw.get("model_type")
    if model_type is None:
        raise InputError(f"{folder}/config.json has no model_type; it is not a transformers checkpoint config")
    if model_type not in CONFIG_MAPPING_NAMES:
        if "auto_map" in raw:
            raise InputError(f"{folder}: model_type '{model_type}' comes with its own code (auto_map in config.json), "
                             f"which edgeopt does not run; only architectures built into transformers are supported")
        raise InputError(f"{folder}: model_type '{model_type}' is not supported by transformers {transformers.__version__}; "
                         f"upgrade transformers if the architecture is newer, or fix model_type in config.json")
    try:
        return transformers.AutoConfig.from_pretrained(folder)
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{folder}/config.json: not a valid {model_type} config for transformers "
                         f"{transformers.__version__} ({_first_line(e)})") from e


def check_task_head(config, task: str, folder: Path) -> None:
    """Fail with the architecture's name when transformers has no model for ``task`` in this family."""
    import transformers
    from transformers.models.auto import modeling_auto

    names = getattr(modeling_auto, TASK_MAPPINGS[task])
    if config.model_type not in names:
        raise InputError(f"{folder}: transformers {transformers.__version__} has no {task} model for model_type "
                         f"'{config.model_type}'; choose another --task")


def text_input_names(config) -> list[str]:
    """The tokenizer outputs the model takes. token_type_ids only where the model embeds more than one
    token type: RoBERTa / XLM-R (one type) and DeBERTa-v3 (none) ignore them; DistilBERT, MPNet and
    ModernBERT have no such input at all."""
    names = ["input_ids", "attention_mask"]
    if int(getattr(config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


def image_size(config, preprocessor: dict[str, Any]) -> list[int]:
    """The model's input height and width: the processor's crop when it crops, else its resize
    target, else the config's image_size (convolutional nets without one take any size; 224 is
    their training size)."""
    size: Any = None
    if preprocessor.get("do_center_crop") and preprocessor.get("crop_size"):
        size = preprocessor["crop_size"]
    elif "size" in preprocessor:
        size = preprocessor["size"]
    if size is None:
        size = getattr(config, "image_size", None) or 224
    if isinstance(size, dict):
        edge = size.get("shortest_edge")
        return [int(size.get("height", edge)), int(size.get("width", edge))]
    if isinstance(size, (list, tuple)):
        return [int(size[0]), int(size[-1])]
    return [int(size), int(size)]


# Families whose position ids start after the padding index (fairseq's convention): the first
# pad_token_id + 1 rows of the position table are never used for tokens.
POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "xmod", "roberta-prelayernorm"}


def max_text_length(config, cap: int = 512) -> int:
    """The longest token sequence the model embeds, at most ``cap`` (longer inputs are truncated)."""
    n = int(getattr(config, "max_position_embeddings", None) or cap)
    if config.model_type in POSITIONS_AFTER_PADDING:
        n -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return max(1, min(n, cap))


def ort_fusion_type(config) -> Optional[str]:
    return ORT_FUSION.get(config.model_type)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
