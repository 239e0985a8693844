"""Model loading: Hugging Face folders and plain PyTorch modules, behind one call."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..artifact import Artifact


def load_torch_model(artifact: "Artifact", for_export: bool = False) -> "torch.nn.Module":
    """Return an eval-mode module whose forward takes the IO spec's inputs in order
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
