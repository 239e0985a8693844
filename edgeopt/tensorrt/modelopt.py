"""int8 for TensorRT by NVIDIA ModelOpt's ONNX PTQ (``modelopt.onnx.quantization``): TensorRT-aware
Q/DQ placement (MatMul/Conv/Gemm and residual Adds; LayerNorm, Softmax and GELU left in float),
symmetric int8 with zero point 0, calibrated on the user's real data with ONNX Runtime on the CPU.

ModelOpt pins its own onnx / onnxruntime and imports torch, so it runs in its own Python:
``EDGEOPT_MODELOPT_PYTHON`` (a venv with nvidia-modelopt), else this interpreter if it has it.
It runs there as ``python -m modelopt.onnx.quantization`` on a copy of the graph (it rewrites its
input in place) with the calibration data as an .npz file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, StageError

SETUP = ("python3 -m venv ~/.venvs/modelopt && ~/.venvs/modelopt/bin/pip install nvidia-modelopt onnx onnxruntime "
         "onnx-graphsurgeon onnxslim onnxscript ml_dtypes lief torch, then export EDGEOPT_MODELOPT_PYTHON=~/.venvs/modelopt/bin/python")


def modelopt_python() -> str:
    exe = os.environ.get("EDGEOPT_MODELOPT_PYTHON")
    if exe:
        if not shutil.which(exe) and not Path(exe).expanduser().is_file():
            raise MissingDependencyError("nvidia-modelopt", purpose=f"--quantizer modelopt (EDGEOPT_MODELOPT_PYTHON={exe} "
                                         f"does not exist); set it up with: {SETUP}")
        return str(Path(exe).expanduser()) if Path(exe).expanduser().is_file() else exe
    probe = subprocess.run([sys.executable, "-c", "import modelopt.onnx.quantization"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    raise MissingDependencyError("nvidia-modelopt", purpose=f"--quantizer modelopt; it pins its own onnx, onnxruntime and torch, "
                                 f"so give it its own venv: {SETUP}")


def calibration_arrays(parent, calib: str, samples: int) -> dict[str, np.ndarray]:
    """The calibration inputs as one array per model input, N samples along axis 0, padded to one length."""
    from ..data import load_dataset
    from ..models.preprocess import Preprocessor

    pre = Preprocessor(parent)
    data = load_dataset(calib, kind=pre.kind).take(samples)
    feeds = pre(data.samples)  # one batch: padded to its longest input
    return {t.name: np.ascontiguousarray(feeds[t.name]) for t in parent.manifest.io.inputs}


def quantize_for_tensorrt(parent, source: Path, workdir: Path, calib: str, samples: int, *,
                          high_precision: str = "fp32", method: str = "max") -> Path:
    """A ModelOpt Q/DQ copy of ``source`` in ``workdir``, checked to meet TensorRT's Q/DQ rules."""
    from . import graph as g

    python = modelopt_python()
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_in = workdir / "float.onnx"
    shutil.copy2(source, onnx_in)
    if source.with_name(source.name + ".data").exists():
        shutil.copy2(source.with_name(source.name + ".data"), workdir / (source.name + ".data"))
    npz = workdir / "calib.npz"
    np.savez(npz, **calibration_arrays(parent, calib, samples))
    out = workdir / "modelopt.onnx"
    cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(onnx_in), "--quantize_mode", "int8",
           "--calibration_data_path", str(npz), "--calibration_method", method, "--calibration_eps", "cpu",
           "--high_precision_dtype", high_precision, "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if proc.returncode != 0 or not out.is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else f"exit {proc.returncode}")
        raise StageError(f"ModelOpt's ONNX PTQ failed on {source}: {reason.strip()[:300]}")
    model = g.load(out)
    if not g.has_qdq(model):
        raise StageError(f"ModelOpt's ONNX PTQ quantized nothing in {source} (its layers are too small for TensorRT "
                         "int8 to pay off); build --precision fp16")
    g.check_qdq(model, out)
    return out
