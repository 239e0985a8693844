"""This machine's TensorRT and GPU, found without importing anything heavy.

TensorRT's version comes from its Python bindings, else from ``getInferLibVersion()`` of the
installed libnvinfer (the road ONNX Runtime's TensorRT EP uses). The GPU comes from PyTorch where
it is installed with CUDA, else from cuda-python (``cuda.bindings.runtime``), else nvidia-smi.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..errors import EdgeoptError, MissingDependencyError
from .key import Machine, version_tuple

OLDEST = (8, 6)  # named tensor IO (set_input_shape, execute_async_v3) and parser node names


class NoGPU(EdgeoptError):
    """TensorRT is here but no CUDA GPU is visible (exit 1)."""


def import_tensorrt(purpose: str = "building and running TensorRT engines"):
    """The tensorrt module, or one line saying how to get it (it is not on PyPI as a whole)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        if "tensorrt" not in str(e) and "libnvinfer" not in str(e):
            raise
        raise MissingDependencyError(
            "tensorrt", extra="tensorrt", purpose=f"{purpose}; TensorRT's libraries come from NVIDIA (run inside "
            "nvcr.io/nvidia/tensorrt or on JetPack, or pip install tensorrt with NVIDIA's index reachable)") from None
    check_version(trt.__version__)
    return trt


def check_version(version: str) -> tuple[int, ...]:
    from ..errors import ConfigError

    v = version_tuple(version)
    if v[:2] < OLDEST:
        raise ConfigError(f"TensorRT {version} is older than 8.6, the oldest edgeopt builds with (it lacks named tensor IO "
                          "and per-node parser errors); upgrade TensorRT (JetPack 5 ships 8.5: use JetPack 6, or serve the "
                          "ONNX through ONNX Runtime's CUDA provider)")
    return v


def road(version: str) -> str:
    """'flags' (TensorRT 8.6-10.x: precision from builder flags) or 'typed' (TensorRT 11+: every
    network strongly typed; precision comes from the ONNX graph: fp16 casts and Q/DQ nodes)."""
    return "typed" if check_version(version)[0] >= 11 else "flags"


def _libnvinfer_version() -> Optional[str]:
    for name in ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = int(lib.getInferLibVersion())
        # TensorRT 10+: major*10000 + minor*100 + patch; 8.x: major*1000 + minor*100 + patch
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 100000 else f"{v // 1000}.{v // 100 % 10}.{v % 100}"
    return None


@lru_cache(maxsize=None)
def tensorrt_version() -> Optional[str]:
    try:
        import tensorrt as trt

        return trt.__version__
    except ImportError:
        return _libnvinfer_version()


def parse_nvidia_smi(text: str) -> tuple[str, str]:
    """First GPU's (name, compute capability) from ``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader``."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    name, _, cc = line.rpartition(",")
    if not name or not cc.strip():
        raise NoGPU(f"nvidia-smi reports no GPU ({line.strip() or 'empty output'})")
    return name.strip(), cc.strip()


def is_jetson() -> bool:
    return Path(os.environ.get("EDGEOPT_HOST_ROOT", "/"), "etc/nv_tegra_release").exists()


@lru_cache(maxsize=None)
def gpu() -> tuple[str, str, Optional[str]]:
    """(name, compute capability, CUDA runtime version) of GPU 0."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}", torch.version.cuda
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if err == cudart.cudaError_t.cudaSuccess:
            name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
            _, rt = cudart.cudaRuntimeGetVersion()
            return name, f"{props.major}.{props.minor}", f"{rt // 1000}.{rt % 1000 // 10}"
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
        if proc.returncode == 0:
            name, cc = parse_nvidia_smi(proc.stdout)
            return name, cc, None
    raise NoGPU("no CUDA GPU is visible here (PyTorch, cuda-python and nvidia-smi find none); TensorRT engines are built "
                "and run on the GPU that will serve them: run this on that machine (containers: --gpus all, or the "
                "NVIDIA runtime on Jetson)")


def machine(trt_version: Optional[str] = None) -> Machine:
    """This machine's engine-relevant facts (TensorRT version given, or found)."""
    version = trt_version or tensorrt_version()
    if version is None:
        import_tensorrt()  # raises the install hint
    name, cc, cuda = gpu()
    return Machine(tensorrt=str(version), gpu=name, compute_capability=cc, cuda=cuda, jetson=is_jetson())
