"""Which precision each layer of a built engine runs in, read from TensorRT's engine inspector.

``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` (with the builder's
profiling verbosity DETAILED) lists every layer with its input and output tensors, each with a
"Format/Datatype" string such as "Row major linear FP32", "Channel major FP16 format where channel
% 8 == 0" or "Row major linear Int8" (10.x; TensorRT 11 splits the field). Dynamic-shape engines report
"N/A due to dynamic shapes" unless an execution context with input shapes is attached. A layer runs in the narrowest float type it reads or writes
(an int8 convolution may write fp16). Integer and boolean tensors (shapes, indices) say nothing.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterable, Union

# narrowest first: a layer touching int8 and fp16 tensors is an int8 layer
ORDER = ["fp4", "int4", "fp8", "int8", "fp16", "bf16", "fp32"]
# Tested in this order (BFloat16 contains "Float"; UInt8 is an index type, not int8 compute).
_PATTERNS = [("na", r"n/a"), ("fp4", r"\bfp4"), ("int4", r"\bint4\b"), ("fp8", r"\bfp8\b|\bfloat8|e4m3"),
             ("int8", r"\bint8\b"), ("bf16", r"\bbf16\b|bfloat16"), ("fp16", r"\bfp16\b|\bhalf\b|float16"),
             ("fp32", r"\bfp32\b|\bfloat\b|float32")]


def tensor_precision(fmt: str) -> Union[str, None]:
    text = fmt.lower()
    for name, pat in _PATTERNS:
        if re.search(pat, text):
            return None if name == "na" else name  # "N/A due to dynamic shapes": no context was attached
    return None  # Int32, Int64, Bool, UInt8 shape/index tensors


def _formats(layer: dict[str, Any]) -> Iterable[str]:
    for side in ("Inputs", "Outputs"):
        for t in layer.get(side) or []:
            if isinstance(t, dict):
                # 10.x: "Format/Datatype"; 11.x splits it (parsed defensively: the new keys are not all documented)
                fmt = (t.get("Format/Datatype") or t.get("Format/DataType") or t.get("DataType") or t.get("Datatype")
                       or t.get("Format"))
                if fmt:
                    yield str(fmt)


def layer_precision(layer: Union[dict[str, Any], str]) -> Union[str, None]:
    if not isinstance(layer, dict):
        return None  # names only: the engine was built without detailed profiling verbosity
    found = {p for p in (tensor_precision(f) for f in _formats(layer)) if p}
    return next((p for p in ORDER if p in found), None)


def layer_counts(info: Union[str, dict[str, Any]]) -> dict[str, int]:
    """precision -> number of layers, from the inspector's JSON (a string or the parsed dict)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    counts = Counter(p for p in (layer_precision(x) for x in layers) if p)
    return dict(sorted(counts.items(), key=lambda kv: ORDER.index(kv[0])))
