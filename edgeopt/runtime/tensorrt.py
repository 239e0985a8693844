"""TensorRT's own runtime for engine artifacts (format ``trt``, road ``tensorrt``).

No pycuda: device memory comes from PyTorch where it is installed with CUDA, else from
cuda-python (``cuda.bindings.runtime``; ``from cuda import cudart`` is gone in cuda-python 13).
Buffers are allocated once, at the profile's largest shapes, and reused by every call; inputs are
checked against the profile, and a batch larger than the profile's is run in chunks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import MissingDependencyError, StageError

log = logging.getLogger("edgeopt.tensorrt")


class _TorchDevice:
    """Device buffers as PyTorch CUDA tensors, work on one CUDA stream."""

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream

    def alloc(self, nbytes: int):
        buf = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        return buf, buf.data_ptr()

    def h2d(self, buf, arr: np.ndarray) -> None:
        src = self.torch.from_numpy(arr.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            buf[: src.numel()].copy_(src, non_blocking=False)

    def d2h(self, buf, out: np.ndarray) -> None:
        dst = self.torch.from_numpy(out.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            dst.copy_(buf[: dst.numel()], non_blocking=False)

    def sync(self) -> None:
        self.stream.synchronize()


class _CudaPythonDevice:
    """Device buffers from cuda-python's runtime bindings (cudaMalloc / cudaMemcpyAsync)."""

    def __init__(self):
        from cuda.bindings import runtime as cudart

        self.rt = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())
        self.handle = int(self.stream)
        self._owned: list = []

    def _ok(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            raise StageError(f"CUDA error: {text.decode() if isinstance(text, bytes) else text}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def alloc(self, nbytes: int):
        ptr = self._ok(self.rt.cudaMalloc(max(nbytes, 1)))
        self._owned.append(ptr)
        return ptr, int(ptr)

    def h2d(self, buf, arr: np.ndarray) -> None:
        self._ok(self.rt.cudaMemcpyAsync(buf, arr.ctypes.data, arr.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def d2h(self, buf, out: np.ndarray) -> None:
        self._ok(self.rt.cudaMemcpyAsync(out.ctypes.data, buf, out.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def sync(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def __del__(self):
        for ptr in getattr(self, "_owned", []):
            self.rt.cudaFree(ptr)


def device():
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchDevice()
    except ImportError:
        pass
    try:
        return _CudaPythonDevice()
    except ImportError:
        raise MissingDependencyError("cuda-python", purpose="device memory for TensorRT engines without PyTorch") from None


class TrtRuntime:
    """Runs a serialized engine: ``run(feeds) -> outputs`` like every edgeopt runtime."""

    def __init__(self, artifact, *, engine_bytes: Optional[bytes] = None, all_outputs: bool = False):
        from ..tensorrt.key import check_key
        from ..tensorrt.machine import import_tensorrt, machine

        trt = import_tensorrt()
        info = artifact.manifest.model
        path = Path(artifact.path) / info.file
        if engine_bytes is None:
            here = machine(trt.__version__)
            for warning in check_key(info.key, here, engine=str(artifact.path),
                                     rebuild=f"edgeopt engine {artifact.path} -o NEW_FOLDER --precision {info.precision}"):
                log.warning(warning)
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        if info.key.version_compatible:
            runtime.engine_host_code_allowed = True  # the lean runtime embedded in the plan
        self.engine = runtime.deserialize_cuda_engine(engine_bytes if engine_bytes is not None else path.read_bytes())
        if self.engine is None:
            raise StageError(f"TensorRT {trt.__version__} could not load {path} (corrupted, or built by another TensorRT); "
                             f"rebuild it with `edgeopt engine {artifact.path} -o NEW_FOLDER`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_outputs = [n for n in names if n not in self.input_names]
        declared = [t.name for t in artifact.manifest.io.outputs]
        self.output_names = engine_outputs if all_outputs else [n for n in declared if n in engine_outputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.profile = {n: [list(s) for s in self.engine.get_tensor_profile_shape(n, 0)] for n in self.input_names}
        batch_axes = {t.name: 0 for t in artifact.manifest.io.inputs if t.shape and t.shape[0] == "batch"}
        self.max_batch = min((self.profile[n][2][0] for n in batch_axes if n in self.profile), default=None)
        self.device = device()
        # One buffer per tensor, sized for the profile's largest input shapes, reused by every call.
        for n in self.input_names:
            self.context.set_input_shape(n, self.profile[n][2])
        self.buffers = {}
        for n in names:
            shape = self.profile[n][2] if n in self.input_names else list(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise StageError(f"output '{n}' has a data-dependent shape {shape}; edgeopt's TensorRT runtime needs "
                                 "outputs whose shape follows from the inputs")
            buf, ptr = self.device.alloc(int(np.prod(shape)) * self.dtypes[n].itemsize)
            self.buffers[n] = buf
            self.context.set_tensor_address(n, ptr)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from ..tensorrt.profiles import check_within

        batch = next(iter(feeds[n].shape[0] for n in self.input_names if feeds[n].ndim), None)
        if self.max_batch and batch and batch > self.max_batch:  # larger than the profile: run it in chunks
            parts = [self.run({n: feeds[n][i : i + self.max_batch] for n in self.input_names})
                     for i in range(0, batch, self.max_batch)]
            return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(self.output_names))]
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names}
        check_within(self.profile, {n: a.shape for n, a in arrays.items()})
        for n, a in arrays.items():
            self.context.set_input_shape(n, a.shape)
            self.device.h2d(self.buffers[n], a)
        outs = []
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            outs.append(np.empty(shape, dtype=self.dtypes[n]))
        if not self.context.execute_async_v3(self.device.handle):
            raise StageError("TensorRT failed to run the engine (execute_async_v3 returned false)")
        for n, o in zip(self.output_names, outs):
            self.device.d2h(self.buffers[n], o)
        self.device.sync()
        return [o.astype(np.float32) if o.dtype.kind == "f" and o.dtype != np.float32 else o for o in outs]
