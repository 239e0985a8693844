"""Graph rewrites tune can try on a quantized graph, each with the ONNX Runtime session settings it
needs to survive loading.

ONNX Runtime's CPU kernel for the fused ``SkipLayerNormalization`` (residual add + bias + LayerNorm,
written by its transformer optimizer at export) measured 5-9x slower than the same work as ``Add`` +
standard ``LayerNormalization`` on an AVX-512 Xeon with onnxruntime 1.31 (BERT-style encoders at
batch 8 spend a quarter of their time in it). Splitting it back only pays if ONNX Runtime does not fuse
it again at load, so the rewrite comes with ``optimization.disable_specified_optimizers``. Whether it
pays on a given CPU is what tune measures; nothing here assumes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MS = "com.microsoft"


@dataclass(frozen=True)
class Rewrite:
    name: str
    label: str
    applies: Callable[[object], bool]  # onnx.ModelProto -> whether the rewrite changes it
    apply: Callable[[object], int]  # rewrites the ModelProto in place; returns how many nodes it changed
    session_config: dict[str, str]


def _opset(model) -> int:
    """The graph's default-domain (ai.onnx) opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _skip_layernorms(model) -> list[int]:
    """Positions of the SkipLayerNormalization nodes the rewrite can split (optional mean / inv-std
    outputs unused)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    out = []
    for k, n in enumerate(model.graph.node):
        if n.op_type == "SkipLayerNormalization" and n.domain == MS:
            if not any(o and o in used for o in list(n.output)[1:3]):
                out.append(k)
    return out


def _has_skip_layernorm(model) -> bool:
    return _opset(model) >= 17 and bool(_skip_layernorms(model))  # standard LayerNormalization: opset 17


def _unfuse_skip_layernorm(model) -> int:
    """SkipLayerNormalization(x, skip, gamma[, beta[, bias]]) -> (x + bias) + skip -> LayerNormalization,
    its input_skip_bias_sum output (if any) kept as the sum. Same math, same epsilon."""
    from onnx import helper

    targets = set(_skip_layernorms(model))
    nodes, changed = [], 0
    for k, n in enumerate(model.graph.node):
        if k not in targets:
            nodes.append(n)
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        x, skip, gamma, beta, bias = ins[:5]
        eps = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon"), 1e-12)
        outs = list(n.output) + [""] * (4 - len(n.output))
        base = n.name or f"SkipLayerNormalization_{k}"
        cur = x
        if bias:
            nodes.append(helper.make_node("Add", [cur, bias], [f"{base}/unfused_bias"], name=f"{base}/unfused_bias_add"))
            cur = f"{base}/unfused_bias"
        total = outs[3] or f"{base}/unfused_sum"
        nodes.append(helper.make_node("Add", [cur, skip], [total], name=f"{base}/unfused_skip_add"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [outs[0]],
                                      name=f"{base}/unfused_layernorm", axis=-1, epsilon=float(eps)))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changed


REWRITES: dict[str, Rewrite] = {
    r.name: r for r in (
        Rewrite("unfuse-skip-layernorm", "SkipLayerNorm unfused", _has_skip_layernorm, _unfuse_skip_layernorm,
                {"optimization.disable_specified_optimizers": "SkipLayerNormFusion"}),
    )
}


def applicable(model_path: Path) -> list[str]:
    """The rewrites that would change the graph at ``model_path``."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [name for name, r in REWRITES.items() if r.applies(model)]


def apply_rewrites(model_path: Path, names: list[str]) -> dict[str, int]:
    """Rewrite the ONNX file in place (external weights stay where they are); per rewrite, how many
    nodes it changed."""
    import onnx

    if not names:
        return {}
    model = onnx.load(str(model_path), load_external_data=False)
    done = {name: REWRITES[name].apply(model) for name in names}
    onnx.save(model, str(model_path))
    return done


def session_config_for(names: list[str]) -> dict[str, str]:
    """The session settings the rewrites need (disabled optimizers joined with ';', as ONNX Runtime reads them)."""
    out: dict[str, str] = {}
    for name in names:
        for k, v in REWRITES[name].session_config.items():
            out[k] = ";".join(dict.fromkeys((out[k].split(";") if k in out else []) + v.split(";")))
    return out
