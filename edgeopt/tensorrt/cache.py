"""Engines built where they run: the first start of a packaged GPU or Jetson image.

An engine is bound to the TensorRT version and the GPU, so images ship the ONNX model and build
the engine on the device, once, into the engine cache (a mounted volume: ``EDGEOPT_ENGINE_CACHE``,
else the target's ``engine.cache_dir``, else ``~/.cache/edgeopt/engines``). The cached engine is an
ordinary engine artifact in a folder named by its key: model hash, TensorRT version, GPU, CUDA,
profiles, precision. A new model, TensorRT or GPU gives a new key and a new build; the same ones
reuse it. Concurrent starts sharing a volume build once (a file lock).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional

from ..artifact import Artifact, load_artifact
from ..errors import ConfigError
from .key import EngineKey, EngineMismatch, check_key
from .profiles import shape_args

log = logging.getLogger("edgeopt.tensorrt")


def cache_root(spec=None) -> Path:
    env = os.environ.get("EDGEOPT_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    if spec is not None and spec.engine.cache_dir and os.access(Path(spec.engine.cache_dir).parent, os.W_OK):
        return Path(spec.engine.cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeopt" / "engines"


def default_precision(artifact: Artifact, spec) -> str:
    """EDGEOPT_ENGINE_PRECISION, else best for a Q/DQ graph (int8 layers, fp16 elsewhere), else the target's."""
    env = os.environ.get("EDGEOPT_ENGINE_PRECISION")
    if env:
        if env not in ("fp32", "fp16", "int8", "best"):
            raise ConfigError(f"EDGEOPT_ENGINE_PRECISION={env}: choose fp32, fp16, int8 or best")
        return env
    q = getattr(artifact.manifest.model, "quantization", None)
    return "best" if q and q.get("mode") in ("static", "qat") else spec.engine.precision


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def engine_for(artifact: Artifact, target: str, cache_dir: Optional[Path] = None) -> Artifact:
    """The engine artifact to run ``artifact`` here: an engine artifact that fits this machine as it
    is; otherwise the cached engine for this model, TensorRT and GPU, built now if missing."""
    from ..stages.engine import EngineConfig, _source, engine, profile_for
    from ..targets import get_target
    from .machine import import_tensorrt, machine

    spec = get_target(target)
    trt = import_tensorrt()
    here = machine(trt.__version__)
    if artifact.manifest.format == "trt":
        info = artifact.manifest.model
        try:
            check_key(info.key, here, engine=str(artifact.path), rebuild="")
            return artifact
        except EngineMismatch as e:
            log.warning("%s; rebuilding it from its ONNX source into the engine cache", str(e).split(". Engines")[0])
        precision = info.precision
        profile = info.key.profiles
    else:
        precision = default_precision(artifact, spec)
        profile = profile_for(artifact, spec.name, [])
    src, sha = _source(artifact)
    key = EngineKey(onnx_sha256=sha or "", tensorrt=here.tensorrt, gpu=here.gpu, compute_capability=here.compute_capability,
                    cuda=here.cuda, profiles=profile, precision=precision)
    root = Path(cache_dir) if cache_dir else cache_root(spec)
    folder = root / f"{spec.name}-{precision}-{key.digest()}"
    with _locked(root / f".{folder.name}.lock"):
        if (folder / "manifest.json").is_file():
            cached = load_artifact(folder)
            if cached.manifest.format == "trt" and cached.manifest.model.key == key:
                log.info("engine cache hit: %s", folder)
                return cached
        log.warning("building the %s TensorRT engine for %s on %s (first start; cached in %s)", precision, target, here.gpu, folder)
        return engine(artifact, folder, EngineConfig(precision=precision, target=spec.name, shapes=shape_args(profile),
                                                     timing_cache=str(root / "timing.cache")))
