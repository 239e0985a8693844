from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError


def session_options(threads: Optional[int] = None, session_config: Optional[dict[str, str]] = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    for key, value in (session_config or {}).items():  # e.g. session.intra_op.allow_spinning=0 on a Pi
        so.add_session_config_entry(key, str(value))
    return so


def open_session(path: Path, threads: Optional[int] = None, providers: Optional[list[str]] = None,
                 session_config: Optional[dict[str, str]] = None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads, session_config),
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        raise load_error(path, e) from e


def load_error(path: Path, e: Exception) -> InputError:
    """Name what made ONNX Runtime refuse a model: only a file that does not parse is called
    truncated or corrupted; a missing kernel, a type an op rejects or a too-new format says so."""
    import onnxruntime as ort

    text = str(e).strip()
    detail = text.split("failed:", 1)[-1].strip().splitlines()[0] if text else type(e).__name__
    version = f"ONNX Runtime {ort.__version__}"
    if type(e).__name__ == "InvalidProtobuf" or "No graph was found" in text:
        return InputError(f"{path}: ONNX Runtime cannot load the model ({detail}); the file is truncated or corrupted")
    if m := re.search(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'", text):
        op, since, node = m.groups()
        types = _node_input_types(path, node)
        typed = f" with input types {', '.join(types)}" if types else ""
        fix = "export in float32 (--dtype float32)" if set(types) & {"bfloat16", "float16"} else "try another --opset"
        return InputError(f"{path}: {version} cannot load the model: it has no kernel for op {op} (version {since}){typed} "
                          f"(node '{node}'); {fix}")
    if m := re.search(r"Type '([^']+)' of input parameter \((.*?)\) of operator \((\w+)\) in node \((.*?)\)", text):
        dtype, name, op, node = m.groups()
        return InputError(f"{path}: {version} cannot load the model: op {op} does not accept type {dtype} "
                          f"(input '{name}', node '{node}')")
    if m := re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text):
        return InputError(f"{path}: {version} cannot load the model: its IR version {m[1]} is newer than it reads (at most {m[2]}); "
                          f"upgrade onnxruntime, or re-export with an onnx package that writes IR {m[2]}")
    return InputError(f"{path}: {version} cannot load the model ({type(e).__name__}: {detail[:300]})")


def _node_input_types(path: Path, node_name: str) -> list[str]:
    """Element types of a node's inputs, from the graph and ONNX shape inference; [] if unknown
    (also when the onnx package, an extra, is not installed)."""
    try:
        import onnx
    except ImportError:
        return []

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    except Exception:  # an explanation is best-effort: the caller still names the op and node
        return []
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]})
    node = next((n for n in g.node if n.name == node_name), None)
    if node is None:
        return []
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.UNDEFINED: "?"}
    return [names.get(types.get(i, 0)) or onnx.TensorProto.DataType.Name(types[i]).lower() for i in node.input if i]


class OrtRuntime:
    def __init__(self, path: Path, threads: Optional[int] = None, providers: Optional[list[str]] = None,
                 output_names: Optional[list[str]] = None, session_config: Optional[dict[str, str]] = None):
        self.session = open_session(path, threads, providers, session_config)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = output_names or [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], release_memory: bool = False) -> list[np.ndarray]:
        """``release_memory``: hand the memory arena's unused chunks back to the system after this
        run (for an unusually large batch: the arena otherwise keeps its peak for good)."""
        options = None
        if release_memory:
            import onnxruntime as ort

            options = ort.RunOptions()
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return self.session.run(self.output_names, {n: feeds[n] for n in self.input_names}, options)
