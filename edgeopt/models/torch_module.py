"""Plain PyTorch modules: ``package.module:factory`` (or a source file kept in the
artifact) plus a state dict in safetensors."""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..artifact import Artifact, IOSpec, LineageEntry, Manifest, finalize, write_artifact
from ..errors import ConfigError, InputError

WEIGHTS = "weights.safetensors"


def resolve_factory(ref: str, source: Optional[Path] = None) -> Callable[..., Any]:
    """``module:attr`` -> callable. With ``source``, the module is loaded from that file."""
    if ":" not in ref:
        raise ConfigError(f"factory '{ref}' must look like 'package.module:function'")
    mod_name, attr = ref.split(":", 1)
    try:
        if source is not None:
            spec = importlib.util.spec_from_file_location(f"edgeopt_user_{abs(hash(str(source)))}_{mod_name}", source)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod_name)
    except Exception as e:
        raise InputError(f"cannot import '{mod_name}' for factory '{ref}' ({e}); check the module is on PYTHONPATH") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"factory '{ref}': '{attr}' is not a callable in {mod_name}")
    return fn


def load_factory_module(artifact: Artifact):
    import torch

    info = artifact.manifest.model
    source = artifact.path / info.source if info.source else None
    module = resolve_factory(info.factory, source)(**info.kwargs)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"factory {info.factory} returned {type(module).__name__}, not a torch.nn.Module")
    state = read_state_dict(artifact.path / info.weights)
    try:
        from .resize import load_resized

        load_resized(module, state)  # pruned channels: the saved shapes win
    except (RuntimeError, ValueError) as e:
        raise InputError(f"{artifact.path}: weights do not fit the factory's module ({str(e).splitlines()[0]})") from e
    # float32 whatever the factory built or the weights were saved in (bfloat16 has no ONNX
    # Runtime CPU kernels); exports, checks and baselines all start from float32.
    return module.float().eval()


def read_state_dict(path: Path) -> dict:
    """A state dict from safetensors, or from a torch pickle with weights_only=True."""
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in first:
            raise InputError(f"{path}: holds Python objects besides tensors, which edgeopt does not unpickle "
                             f"(weights_only=True); re-save the state dict with safetensors") from e
        raise InputError(f"{path}: cannot read the weights ({first}); the file is truncated or corrupted") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


SAFETENSORS_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def safetensors_dtype(path: Path) -> Optional[str]:
    """The floating-point dtype holding most of a safetensors file's values, read from its header
    alone; None when the file has no float tensors or its header does not parse."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:  # not a header: a corrupt length
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    counts: dict[str, int] = {}
    for name, t in header.items():
        if name != "__metadata__" and t.get("dtype") in SAFETENSORS_FLOATS:
            key = SAFETENSORS_FLOATS[t["dtype"]]
            counts[key] = counts.get(key, 0) + math.prod(t.get("shape") or [1])
    return max(counts, key=counts.__getitem__) if counts else None


def save_torch_artifact(
    module,
    out: Union[str, Path],
    *,
    factory: str,
    task: str,
    io: IOSpec,
    labels: Optional[list[str]] = None,
    source_file: Optional[Path] = None,
    kwargs: Optional[dict[str, Any]] = None,
    parent: Optional[Manifest] = None,
    stage: str = "source",
    config: Optional[dict[str, Any]] = None,
    metrics: Optional[dict[str, Any]] = None,
    extra_model: Optional[dict[str, Any]] = None,
) -> Artifact:
    """Write a torch-format artifact: weights in safetensors, the factory (and its source file) recorded."""
    from .._optional import require

    require("train", purpose="saving a PyTorch artifact", modules=("torch", "safetensors"))
    from safetensors.torch import save_file

    model: dict[str, Any] = {"factory": factory, "kwargs": kwargs or {}, "weights": WEIGHTS, **(extra_model or {})}
    with write_artifact(out) as tmp:
        if source_file is not None:
            shutil.copy2(source_file, tmp / Path(source_file).name)
            model["source"] = Path(source_file).name
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, tmp / WEIGHTS)
        if parent is not None:
            manifest = parent.child(stage=stage, config=config or {}, format="torch", model=model, task=task, labels=labels, io=io)
        else:
            manifest = Manifest(format="torch", task=task, labels=labels, io=io, model=model,
                                lineage=[LineageEntry(stage=stage, config=config or {})])
        manifest.metrics = dict(metrics or {})
        manifest = finalize(tmp, manifest)
    return Artifact(Path(out).expanduser().resolve(), manifest)
