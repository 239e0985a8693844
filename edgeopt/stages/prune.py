"""Pruning: unstructured global magnitude (sparsity only — dense kernels do not get faster), or
structured removal of attention heads, FFN neurons or conv channels, which makes the saved
model smaller and faster. Importance from weight magnitudes or first-order Taylor scores
(|w·∂L/∂w|) on data; optional short recovery fine-tune; before/after metrics in the manifest."""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from ..artifact import Artifact
from ..errors import ConfigError, StageError
from ..outputs import check_output
from .registry import StageConfig, stage


class PruneConfig(StageConfig):
    kind: Literal["prune"] = "prune"
    sparsity: float = Field(..., ge=0, lt=1, description="fraction of weights / heads / neurons / channels to remove")
    structured: Optional[Literal["heads", "neurons", "channels"]] = None
    importance: Literal["magnitude", "taylor"] = "magnitude"
    data: Optional[str] = None  # labelled: Taylor scores and recovery fine-tune
    recover_steps: int = Field(0, ge=0)
    val_data: Optional[str] = None  # labelled: picks the best recovery epoch (never the test data)
    eval_data: Optional[str] = None  # labelled: accuracy before/after
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    taylor_batches: int = Field(8, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _needs_data(self):
        if (self.importance == "taylor" or self.recover_steps > 0) and not self.data:
            raise ValueError("Taylor importance and recovery need labelled data: give --data DATA")
        return self


@stage("prune")
def prune(model, out, config: PruneConfig) -> Artifact:

    from ..models import load_torch_model
    from ..models.preprocess import Preprocessor
    from ..train import TrainSettings, cross_entropy_loss, fit, seed_everything
    from ._torch_common import accuracy, collate_fn, labelled, params_of, save_module, torch_latency_ms, torch_parent

    cfg = config
    parent = torch_parent(model, "prune")
    check_output(out, parent, cfg)
    pm = parent.manifest
    seed_everything(cfg.seed)
    wrapper = load_torch_model(parent)
    pre = Preprocessor(parent)
    train = y_train = None
    if cfg.data:
        train, y_train = labelled(cfg.data, pre, pm.labels, "prune with Taylor importance / recovery")
    evald, y_eval = labelled(cfg.eval_data, pre, pm.labels, "accuracy") if cfg.eval_data else (None, None)
    probe = (evald or train).samples if (evald or train) is not None else None
    if probe is None:
        from ..metrics import sample_dataset

        probe = sample_dataset(parent, 16).samples

    before = {"params": params_of(wrapper), "latency_ms_b8": torch_latency_ms(wrapper, pre, probe)}
    if evald is not None:
        before["accuracy"] = accuracy(wrapper, pre, evald.samples, y_eval)

    scores = None
    if cfg.importance == "taylor":
        scores = _taylor_grads(wrapper, pre, train, y_train, cfg)
    if cfg.structured is None:
        masks = _global_magnitude(wrapper, cfg.sparsity)
        record = {"sparsity": _sparsity(wrapper, masks), "note": "unstructured zeros: dense kernels run no faster and the file is no smaller"}
        model_updates = {}
    elif cfg.structured in ("heads", "neurons"):
        if pm.format != "hf":
            raise ConfigError(f"--structured {cfg.structured} applies to transformer (hf) models; use channels for CNNs")
        from ..models.layouts import layout_for

        layout = layout_for(wrapper.model)
        if layout is None:
            raise ConfigError(f"no pruning layout for model type '{wrapper.model.config.model_type}'; supported: bert, roberta, xlm-roberta, electra")
        record = (_prune_heads if cfg.structured == "heads" else _prune_neurons)(layout, cfg.sparsity, scores)
        masks = None
        model_updates = {"resized": True}
        if cfg.structured == "heads":
            model_updates["attention_heads"] = record["heads_per_layer"]
    else:
        if pm.format != "torch":
            raise ConfigError("--structured channels applies to CNNs (torch artifacts); use heads or neurons for transformers")
        record = _prune_channels(wrapper, cfg.sparsity, scores, pre, probe)
        masks = None
        model_updates = {"resized": True}

    if cfg.recover_steps:
        collate = collate_fn(pre)
        after_step = (lambda: _apply_masks(wrapper, masks)) if masks else None
        val = labelled(cfg.val_data, pre, pm.labels, "validation") if cfg.val_data else None
        ev = (lambda m: accuracy(m, pre, val[0].samples, val[1])) if val is not None else None
        res = fit(wrapper, len(train), cross_entropy_loss(collate, list(train.samples), y_train),
                  TrainSettings(epochs=10_000, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, max_steps=cfg.recover_steps,
                                warmup_ratio=0.05), evaluate=ev, desc="recovering", after_step=after_step)
        record["recovery"] = {"steps": cfg.recover_steps, "history": res.history}
        if masks:
            _apply_masks(wrapper, masks)
    wrapper.eval()
    after = {"params": params_of(wrapper), "latency_ms_b8": torch_latency_ms(wrapper, pre, probe)}
    if evald is not None:
        after["accuracy"] = accuracy(wrapper, pre, evald.samples, y_eval)
    metrics = {"prune": record, "before": before, "after": after,
               "params_ratio": after["params"] / before["params"],
               "speedup_b8_torch": before["latency_ms_b8"] / after["latency_ms_b8"]}
    if "accuracy" in after:
        metrics["accuracy_drop_points"] = (before["accuracy"] - after["accuracy"]) * 100
    return save_module(parent, wrapper, out, stage="prune", config=cfg.model_dump(), metrics=metrics,
                       model_updates=model_updates)


# ---------------------------------------------------------------- importance
def _taylor_grads(wrapper, pre, train, y, cfg) -> dict:
    """Accumulate |w * dL/dw| per parameter over a few labelled batches."""
    import torch

    from ._torch_common import collate_fn

    collate = collate_fn(pre)
    acc = {n: torch.zeros_like(p) for n, p in wrapper.named_parameters()}
    wrapper.train()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train))
    for b in range(cfg.taylor_batches):
        idx = order[(b * cfg.batch_size) % len(order):][: cfg.batch_size]
        if len(idx) == 0:
            break
        wrapper.zero_grad(set_to_none=True)
        logits = wrapper(*collate([train.samples[i] for i in idx]))
        torch.nn.functional.cross_entropy(logits, torch.as_tensor(y[idx])).backward()
        for n, p in wrapper.named_parameters():
            if p.grad is not None:
                acc[n] += (p.detach() * p.grad.detach()).abs()
    wrapper.zero_grad(set_to_none=True)
    wrapper.eval()
    return acc


# ---------------------------------------------------------------- unstructured
def _prunable(wrapper):
    import torch

    return [(n, m) for n, m in wrapper.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def _global_magnitude(wrapper, sparsity: float) -> dict:
    import torch

    mods = _prunable(wrapper)
    if sparsity == 0 or not mods:
        return {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in mods}
    allw = torch.cat([m.weight.detach().abs().flatten() for _, m in mods])
    k = int(sparsity * allw.numel())
    thresh = torch.kthvalue(allw, max(1, k)).values
    masks = {n: m.weight.detach().abs() > thresh for n, m in mods}
    _apply_masks(wrapper, masks)
    return masks


def _apply_masks(wrapper, masks: dict) -> None:
    import torch

    mods = dict(wrapper.named_modules())
    with torch.no_grad():
        for n, mask in masks.items():
            mods[n].weight.mul_(mask.to(mods[n].weight.dtype))


def _sparsity(wrapper, masks: dict) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(1 - sum(int(m.sum()) for m in masks.values()) / max(1, total))


# ---------------------------------------------------------------- structured
def _keep_rows(lin, idx):
    import torch

    new = torch.nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[idx])
    return new


def _keep_cols(lin, idx):
    import torch

    new = torch.nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def _n_remove(total: int, sparsity: float) -> int:
    return min(total - 1, int(round(total * sparsity)))


def _prune_heads(layout, sparsity: float, scores) -> dict:
    """Remove the same number of least-important heads in every layer (uniform shapes keep
    ONNX Runtime's attention fusion possible)."""
    import torch

    removed = {}
    wrapper_params = {id(p): n for n, p in layout.model.named_parameters()}
    kept_heads = None
    for li, layer in enumerate(layout.layers()):
        d = layout.head_dim(layer)
        owner, names = layout.qkv(layer)
        q, k, v = (getattr(owner, n) for n in names)
        o_owner, o_name = layout.attn_out(layer)
        o = getattr(o_owner, o_name)
        n_heads = q.out_features // d

        def s(mod):
            if scores is not None and id(mod.weight) in wrapper_params:
                key = [n for n in scores if n.endswith(wrapper_params[id(mod.weight)])]
                if key:
                    return scores[key[0]]
            return mod.weight.detach().abs()

        imp = torch.zeros(n_heads)
        for mod in (q, k, v):
            imp += s(mod).reshape(n_heads, d, -1).sum(dim=(1, 2))
        imp += s(o).reshape(o.out_features, n_heads, d).sum(dim=(0, 2))
        drop = torch.argsort(imp)[: _n_remove(n_heads, sparsity)].tolist()
        keep_h = [h for h in range(n_heads) if h not in drop]
        rows = [h * d + j for h in keep_h for j in range(d)]
        for n in names:
            setattr(owner, n, _keep_rows(getattr(owner, n), rows))
        setattr(o_owner, o_name, _keep_cols(o, rows))
        owner.num_attention_heads = len(keep_h)
        owner.all_head_size = len(rows)
        removed[li] = sorted(drop)
        kept_heads = len(keep_h)
    return {"structured": "heads", "removed_heads": removed, "heads_per_layer": kept_heads}


def _prune_neurons(layout, sparsity: float, scores) -> dict:
    import torch

    names = {id(p): n for n, p in layout.model.named_parameters()}
    kept = None
    for layer in layout.layers():
        i_owner, i_name = layout.ffn_in(layer)
        o_owner, o_name = layout.ffn_out(layer)
        fi, fo = getattr(i_owner, i_name), getattr(o_owner, o_name)

        def s(mod):
            if scores is not None:
                key = [n for n in scores if n.endswith(names.get(id(mod.weight), "?"))]
                if key:
                    return scores[key[0]]
            return mod.weight.detach().abs()

        imp = s(fi).sum(dim=1) + s(fo).sum(dim=0)
        n = fi.out_features
        keep = torch.sort(torch.argsort(imp, descending=True)[: n - _n_remove(n, sparsity)]).values.tolist()
        setattr(i_owner, i_name, _keep_rows(fi, keep))
        setattr(o_owner, o_name, _keep_cols(fo, keep))
        kept = len(keep)
    layout.model.config.intermediate_size = kept  # uniform per layer, so the config stays true
    return {"structured": "neurons", "intermediate_size": kept}


def _prune_channels(wrapper, sparsity: float, scores, pre, probe) -> dict:
    """Sequential CNNs: each Conv2d's output channels, with the BatchNorm after it and the input
    channels of the next Conv2d / Linear (after global pooling)."""
    import torch
    from torch import nn

    chain = [(n, m) for n, m in wrapper.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    report = {}
    i = 0
    while i < len(chain):
        name, conv = chain[i]
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            i += 1
            continue
        bn = chain[i + 1] if i + 1 < len(chain) and isinstance(chain[i + 1][1], nn.BatchNorm2d) else None
        nxt_i = i + (2 if bn else 1)
        if nxt_i >= len(chain):
            break
        nxt_name, nxt = chain[nxt_i]
        if not (isinstance(nxt, nn.Conv2d) and nxt.in_channels == conv.out_channels and nxt.groups == 1) and \
           not (isinstance(nxt, nn.Linear) and nxt.in_features == conv.out_channels):
            i += 1
            continue
        # Taylor scores are keyed by parameter name (computed before any layer was replaced).
        w = scores[f"{name}.weight"] if scores is not None and f"{name}.weight" in scores else conv.weight.detach().abs()
        imp = w.sum(dim=(1, 2, 3))
        n = conv.out_channels
        keep = torch.sort(torch.argsort(imp, descending=True)[: n - _n_remove(n, sparsity)]).values
        with torch.no_grad():
            new = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                            bias=conv.bias is not None, padding_mode=conv.padding_mode)
            new.weight.copy_(conv.weight[keep])
            if conv.bias is not None:
                new.bias.copy_(conv.bias[keep])
            _set(wrapper, name, new)
            if bn:
                b = bn[1]
                nb = nn.BatchNorm2d(len(keep), eps=b.eps, momentum=b.momentum)
                nb.weight.copy_(b.weight[keep]); nb.bias.copy_(b.bias[keep])
                nb.running_mean.copy_(b.running_mean[keep]); nb.running_var.copy_(b.running_var[keep])
                _set(wrapper, bn[0], nb)
            if isinstance(nxt, nn.Conv2d):
                nc = nn.Conv2d(len(keep), nxt.out_channels, nxt.kernel_size, nxt.stride, nxt.padding, nxt.dilation,
                               bias=nxt.bias is not None, padding_mode=nxt.padding_mode)
                nc.weight.copy_(nxt.weight[:, keep])
                if nxt.bias is not None:
                    nc.bias.copy_(nxt.bias)
            else:
                nc = _keep_cols(nxt, keep.tolist())
            _set(wrapper, nxt_name, nc)
        report[name] = {"channels": n, "kept": len(keep)}
        chain = [(nm, wrapper.get_submodule(nm)) for nm, _ in chain]
        i += 1
    if not report:
        raise ConfigError("found no prunable conv -> (batchnorm) -> conv/linear chain in this model")
    try:
        from ._torch_common import collate_fn

        with torch.no_grad():
            wrapper(*collate_fn(pre)(list(probe[:2])))
    except Exception as e:
        raise StageError(f"channel pruning broke the model's forward pass ({str(e).splitlines()[0]}); "
                         "this architecture is not a plain conv chain") from e
    return {"structured": "channels", "layers": report}


def _set(root, name: str, module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)
