"""Rebuild modules whose saved weights have a different shape (structured pruning).

A pruned checkpoint stores smaller weights under the same names. Before loading it, each
nn.Linear / nn.Conv2d / norm / embedding whose saved weight differs in shape is replaced by one
of the saved shape, so no side file is needed: the weights file describes the architecture.
"""
from __future__ import annotations


def load_resized(model, state: dict, strict: bool = True):
    from torch import nn

    changed = []
    for name, mod in list(model.named_modules()):
        w = state.get(f"{name}.weight" if name else "weight")
        if w is None or not hasattr(mod, "weight") or mod.weight is None or tuple(mod.weight.shape) == tuple(w.shape):
            continue
        has_bias = getattr(mod, "bias", None) is not None
        if isinstance(mod, nn.Linear):
            new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        elif isinstance(mod, nn.Conv2d):
            new = nn.Conv2d(w.shape[1] * mod.groups, w.shape[0], mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups, bias=has_bias, padding_mode=mod.padding_mode)
        elif isinstance(mod, nn.BatchNorm2d):
            new = nn.BatchNorm2d(w.shape[0], eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                                 track_running_stats=mod.track_running_stats)
        elif isinstance(mod, nn.LayerNorm):
            new = nn.LayerNorm(tuple(w.shape), eps=mod.eps, elementwise_affine=True, bias=has_bias)
        elif isinstance(mod, nn.Embedding):
            new = nn.Embedding(w.shape[0], w.shape[1], padding_idx=mod.padding_idx)
        else:
            raise ValueError(f"cannot resize {type(mod).__name__} '{name}' to {tuple(w.shape)}")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new.to(mod.weight.dtype))
        changed.append(name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        # tied / non-persistent buffers (e.g. position_ids) are fine to miss
        real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if real_missing or unexpected:
            raise ValueError(f"weights do not fit: missing {real_missing[:3]}, unexpected {unexpected[:3]}")
    return changed
