"""Model loading: Hugging Face folders and plain PyTorch modules, behind one call."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..artifact import Artifact


def load_torch_model(artifact: "Artifact", for_export: bool = False) -> "torch.nn.Module":
    """Return an eval-mode float32 module whose forward takes the IO spec's inputs in order
    and returns its outputs (a tensor, or a tuple in IO order)."""
    fmt = artifact.manifest.format
    if fmt == "hf":
        from .hf import load_hf_module

        return load_hf_module(artifact, for_export=for_export)
    if fmt == "torch":
        from .torch_module import load_factory_module

        return load_factory_module(artifact)
    from ..errors import InputError

    raise InputError(f"{artifact.path}: format '{fmt}' is not a PyTorch model; this stage needs an hf or torch artifact")


def source_dtype(artifact: "Artifact") -> Optional[str]:
    """The dtype the weights were saved in: config.json's ``dtype`` (``torch_dtype`` before
    transformers v5), else the safetensors header; None when neither says."""
    from .torch_module import safetensors_dtype

    fmt = artifact.manifest.format
    if fmt == "torch":
        return safetensors_dtype(artifact.path / artifact.manifest.model.weights)
    if fmt != "hf":
        return None
    from .hf import read_json

    config = read_json(artifact.path / "config.json")
    declared = config.get("dtype") or config.get("torch_dtype")
    if declared:
        return str(declared)
    index = artifact.path / "model.safetensors.index.json"
    if index.is_file():  # sharded: the first shard speaks for all
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        return safetensors_dtype(artifact.path / shards[0]) if shards else None
    return safetensors_dtype(artifact.path / "model.safetensors")
