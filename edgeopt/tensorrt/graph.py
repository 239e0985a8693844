"""What TensorRT needs from an ONNX graph, checked before any builder runs.

- Q/DQ: TensorRT reads int8 as QuantizeLinear/DequantizeLinear pairs with zero point 0
  (symmetric), positive scales, int8 (or fp8) types, and no int32 bias dequantization.
- Standard ops only: ONNX Runtime's fused contrib ops and integer-arithmetic quantization are not
  parsed (``edgeopt.targets.unsupported_ops`` names them).
- fp16 on TensorRT 11: networks are strongly typed, so fp16 must be in the graph: float weights and
  activations cast to float16 with the inputs and outputs kept float32 (``cast_fp16``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from ..errors import ConfigError, InputError

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Kept float32 in fp16 graphs: reductions and normalisations whose sums overflow float16's 65504
# (TensorRT warns about fp16 LayerNorm for the same reason), plus ONNX Runtime's own block list.
FP32_OPS = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax", "Erf", *QDQ_OPS]


def _nodes(model) -> list:
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    return nodes


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: t for t in model.graph.initializer}
    for n in _nodes(model):
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return {k: numpy_helper.to_array(v) for k, v in out.items()}


def load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # a truncated or foreign file: name it, not protobuf's message
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-export it") from e


def has_qdq(model) -> bool:
    return any(n.op_type in QDQ_OPS for n in _nodes(model))


def qdq_problems(model) -> list[str]:
    """Why TensorRT would reject this Q/DQ graph, one entry per reason naming up to 3 nodes ([] if none)."""
    consts = _constants(model)
    found: dict[str, list[str]] = {}

    def add(reason: str, node) -> None:
        found.setdefault(reason, []).append(node.name or node.output[0])

    for n in _nodes(model):
        if n.op_type not in QDQ_OPS:
            continue
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is not None and np.any(np.asarray(scale, np.float64) <= 0):
            add("scales that are not positive", n)
        if zp is not None:
            if zp.dtype == np.uint8:
                add("uint8 (asymmetric) quantization", n)
            elif zp.dtype == np.int32:
                add("int32 bias dequantization", n)
            elif np.any(zp.astype(np.float64) != 0):
                add("non-zero zero points", n)
        elif n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].dtype == np.int32:
            add("int32 bias dequantization", n)
    out = []
    for reason, names in found.items():
        shown = ", ".join(f"'{x}'" for x in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        out.append(f"{reason} ({shown})")
    return out


def check_qdq(model, path: Path, target: str = "gpu-server") -> None:
    problems = qdq_problems(model)
    if problems:
        raise InputError(f"{path}: TensorRT takes symmetric int8 Q/DQ only (zero point 0, float biases), and this graph has "
                         f"{'; '.join(problems)}; quantize for TensorRT with `edgeopt quantize MODEL --ptq static --calib DATA "
                         f"--target {target}`, --qat, or `edgeopt engine MODEL --precision int8 --quantizer modelopt --calib DATA`")


def check_standard_ops(path: Path, target: str = "gpu-server") -> None:
    """ONNX Runtime contrib ops and integer quantization ops, named before the parser runs."""
    from ..targets import get_target, unsupported_ops

    problems = unsupported_ops(get_target(target), path)
    if problems:
        raise InputError(f"{path}: TensorRT cannot build this graph: {'; '.join(problems)}")


def cast_fp16(model, block_ops: Iterable[str] = ()) -> Any:
    """A float16 copy of a float32 graph for strongly typed builds: weights and activations in
    float16, inputs and outputs kept float32, overflow-prone ops and Q/DQ kept float32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.ModelProto.FromString(model.SerializeToString())
    out = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS, *block_ops])
    _dedupe_and_sort(out.graph)
    return out


def _dedupe_and_sort(graph) -> None:
    """Repair what the converter does to a float16 tensor read by several blocked nodes (a LayerNorm
    bias shared across layers): one Cast per reader, all with the same name and output, appended
    at the end. Keep one per output, then order the nodes topologically (ONNX requires it)."""
    seen: set[str] = set()
    nodes = []
    for n in graph.node:
        key = n.output[0] if n.op_type == "Cast" and n.output else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        nodes.append(n)
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # inputs from outer scopes or a cycle: keep the rest as they were
            ordered.extend(pending)
            break
        ready_ids = {id(n) for n in ready}
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def float_types(model) -> set[str]:
    """Element types of the graph's float initializers (what precision its weights are in)."""
    import onnx

    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    return {names[t.data_type] for t in model.graph.initializer if t.data_type in names}


def format_parser_errors(errors: list[dict[str, Any]], path: Path, target: str = "gpu-server") -> str:
    """TensorRT's ONNX parser errors, one clause per node: op type, node name, the reason, and the
    fix where edgeopt knows one. ``errors``: [{"node": index, "name": ..., "op": ..., "desc": ...}]."""
    clauses, fixes = [], []
    for e in errors[:5]:
        where = f"node '{e['name']}'" if e.get("name") else (f"node #{e['node']}" if e.get("node", -1) >= 0 else "the graph")
        op = f"op {e['op']} " if e.get("op") else ""
        desc = " ".join(str(e.get("desc", "")).split())[:240]
        clauses.append(f"{op}({where}): {desc}")
        domain_op = str(e.get("op", ""))
        if "com.microsoft" in desc or domain_op in _FUSED_ORT_OPS:
            fixes.append(f"re-export without ONNX Runtime fusions: `edgeopt export MODEL --target {target}`")
        elif domain_op in {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger"} or domain_op.startswith("QLinear"):
            fixes.append(f"quantize with Q/DQ nodes: `edgeopt quantize --ptq static --calib DATA --target {target}`")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    fix = f"; {fixes[0]}" if fixes else "; check the op against TensorRT's ONNX operator support matrix, or try another --opset"
    return f"{path}: TensorRT's ONNX parser rejected the model: {'; '.join(clauses)}{more}{fix}"


_FUSED_ORT_OPS = {"Attention", "MultiHeadAttention", "BiasGelu", "FastGelu", "SkipLayerNormalization",
                  "EmbedLayerNormalization", "FusedMatMul", "QOrderedAttention", "GroupQueryAttention", "RotaryEmbedding",
                  "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "BiasSplitGelu", "QuickGelu"}


def precision_of(model) -> Optional[str]:
    """What an ONNX graph asks of a strongly typed build: int8 (Q/DQ), fp16 (float16 weights) or fp32."""
    if has_qdq(model):
        return "int8"
    return "fp16" if "float16" in float_types(model) else "fp32"


def require_standard(precision: str, model, path: Path) -> None:
    if precision in ("fp32", "fp16") and has_qdq(model):
        raise ConfigError(f"{path} holds Q/DQ nodes, which make those layers int8: ask --precision int8 (or best), or build "
                          "from the float graph it was quantized from")
