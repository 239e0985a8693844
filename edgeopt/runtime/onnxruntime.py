from __future__ import annotations

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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: ONNX Runtime cannot load the model ({first[:300]}); the file may be truncated or corrupted") from e


class OrtRuntime:
    def __init__(self, path: Path, threads: Optional[int] = None, providers: Optional[list[str]] = None,
                 output_names: Optional[list[str]] = None, session_config: Optional[dict[str, str]] = None):
        self.session = open_session(path, threads, providers, session_config)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = output_names or [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
