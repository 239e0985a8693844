"""The ONNX Runtime road to TensorRT: the TensorRT execution provider, with the same profiles,
an engine cache and a timing cache, and an EP-context model (a small ONNX file whose EPContext
node points at the built engine) so later sessions load the engine instead of building it.

onnxruntime-gpu on PyPI (1.27+, CUDA 13) links TensorRT 10 (``libnvinfer.so.10``); TensorRT 11
is reached only by the native road (``edgeopt engine``, the default).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..errors import InputError, MissingDependencyError, StageError
from .profiles import Profile, ort_profile_options

EP = "TensorrtExecutionProvider"
CONTEXT_MODEL = "model_ctx.onnx"
ENGINE_DIR = "engine"


def ep_options(profile: Profile, precision: str, *, engine_cache: Optional[Path] = None,
               timing_cache: Optional[Path] = None, graph_int8: bool = False,
               context_model: Optional[Path] = None, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """TensorRT EP provider options: explicit profiles (built once, at session creation), precision,
    engine and timing caches, and optionally dumping an EP-context model (engine kept beside it)."""
    opts = {**(base or {}), **ort_profile_options(profile)}
    opts["trt_fp16_enable"] = "1" if precision in ("fp16", "best") else "0"
    opts["trt_int8_enable"] = "1" if precision in ("int8", "best") and graph_int8 else "0"
    if engine_cache is not None:
        opts.update(trt_engine_cache_enable="1", trt_engine_cache_path=str(engine_cache))
    if timing_cache is not None:
        opts.update(trt_timing_cache_enable="1", trt_timing_cache_path=str(timing_cache))
    if context_model is not None:
        opts.update(trt_dump_ep_context_model="1", trt_ep_context_file_path=str(context_model), trt_ep_context_embed_mode="0")
    return opts


def require_ep(purpose: str) -> None:
    import onnxruntime as ort

    if EP not in ort.get_available_providers():
        raise MissingDependencyError(
            "onnxruntime-gpu", extra="gpu", purpose=f"{purpose} through ONNX Runtime's TensorRT EP (this onnxruntime "
            f"{ort.__version__} has {', '.join(ort.get_available_providers())}; it also needs TensorRT 10's libnvinfer)")


def build_ep_context(req, tmp: Path):
    """Build through ONNX Runtime's TensorRT EP into ``tmp``: the EP-context model plus its engine."""
    import onnxruntime as ort

    from . import graph as g
    from .build import BuildResult
    from .machine import machine

    require_ep("building an engine")
    here = machine()
    graph_int8 = g.precision_of(g.load(req.onnx)) == "int8"
    engine_dir = tmp / ENGINE_DIR
    engine_dir.mkdir()
    opts = ep_options(req.profile, req.precision, engine_cache=engine_dir, graph_int8=graph_int8,
                      timing_cache=req.timing_cache.parent if req.timing_cache else None, context_model=tmp / CONTEXT_MODEL)
    t0 = time.perf_counter()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(req.onnx), so, providers=[(EP, opts), "CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as e:
        raise StageError(f"ONNX Runtime's TensorRT EP could not build {req.onnx}: {str(e).strip().splitlines()[-1][:300]}") from e
    if not (tmp / CONTEXT_MODEL).is_file():
        raise StageError("ONNX Runtime's TensorRT EP wrote no EP-context model: TensorRT did not take the whole graph "
                         "(some nodes fell back to CUDA or CPU); export it for the target (`edgeopt export --target gpu-server`)")
    files = sorted(p.relative_to(tmp).as_posix() for p in engine_dir.rglob("*") if p.is_file())
    return BuildResult(engine=b"", layers=[], machine=here, road="onnxruntime-ep",
                       flags=[k for k, v in opts.items() if v == "1"], fp16_cast=False, seconds=time.perf_counter() - t0,
                       file=CONTEXT_MODEL, engine_files=files)


class OrtTrtRuntime:
    """An EP-context engine artifact run by ONNX Runtime's TensorRT EP."""

    def __init__(self, artifact):
        from ..runtime.onnxruntime import open_session
        from .key import check_key
        from .machine import machine

        require_ep("running the engine")
        info = artifact.manifest.model
        for w in check_key(info.key, machine(), engine=str(artifact.path),
                           rebuild=f"edgeopt engine {artifact.path} -o NEW_FOLDER --runtime onnxruntime"):
            import logging

            logging.getLogger("edgeopt.tensorrt").warning(w)
        path = Path(artifact.path) / info.file
        if not path.is_file():
            raise InputError(f"{path}: the EP-context model is missing; rebuild the engine")
        opts = ep_options(info.key.profiles, info.precision, engine_cache=Path(artifact.path) / ENGINE_DIR,
                          graph_int8="trt_int8_enable" in info.build.get("flags", []))  # as it was built
        self.session = open_session(path, providers=[(EP, opts), "CUDAExecutionProvider", "CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [t.name for t in artifact.manifest.io.outputs]

    def run(self, feeds):
        return self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
