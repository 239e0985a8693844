"""`edgeopt engine`: a TensorRT engine from an ONNX artifact, built on the GPU that will run it.

One code path for both TensorRT roads, chosen from the installed version:
- TensorRT 8.6-10.x ("flags"): fp16 / int8 through builder flags; int8 from the graph's Q/DQ nodes
  (no calibrators: they are deprecated in 10 and gone in 11);
- TensorRT 11+ ("typed"): every network is strongly typed and builder precision flags are gone, so
  fp16 is cast into the graph (inputs and outputs stay float32) and int8 comes from Q/DQ nodes.
Either way the built engine's layers are inspected and the build fails if the requested precision
is absent (asking an 11.x builder for fp16 by flag silently gives fp32), and the engine is run
against ONNX Runtime on the CPU on real inputs with tolerances per precision.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from ..artifact import Artifact, finalize, load_artifact, write_artifact
from ..errors import ConfigError, ValidationError
from ..outputs import check_output
from .registry import StageConfig, stage

log = logging.getLogger("edgeopt.engine")

Precision = Literal["fp32", "fp16", "int8", "best"]
# Engine vs ONNX Runtime CPU on the same inputs. fp32 engines use TF32 tensor cores by default
# (10 mantissa bits), fp16 keeps ~3 significant digits; int8 is judged by agreement, not allclose.
TOLERANCES = {"fp32": (5e-3, 5e-3), "fp16": (3e-2, 3e-2), "int8": (None, None), "best": (None, None)}
MIN_TOP1 = {"fp32": 1.0, "fp16": 0.99, "int8": 0.95, "best": 0.95}
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98, "best": 0.98}


class EngineConfig(StageConfig):
    kind: Literal["engine"] = "engine"
    precision: Precision = "fp16"
    shapes: list[str] = Field(default_factory=list)  # NAME:MIN:OPT:MAX overrides, e.g. input_ids:1x1:8x128:32x512
    workspace_gb: Optional[float] = Field(None, gt=0)
    timing_cache: Optional[str] = None  # read before and written after the build (kept across builds)
    version_compatible: bool = False
    hardware_compat: Literal["none", "ampere+"] = "none"
    quantizer: Literal["qdq", "modelopt"] = "qdq"  # qdq: the graph's own Q/DQ (QAT, static PTQ)
    calib: Optional[str] = None  # calibration data for --quantizer modelopt
    calib_samples: int = Field(128, ge=1)
    runtime: Literal["tensorrt", "onnxruntime"] = "tensorrt"  # onnxruntime: ONNX Runtime's TensorRT EP (EP-context model)
    target: Optional[str] = None  # a TensorRT target: profile defaults; default the artifact's, else gpu-server
    check_data: Optional[str] = None
    check_samples: int = Field(32, ge=1)
    atol: Optional[float] = Field(None, ge=0)
    rtol: Optional[float] = Field(None, ge=0)

    @model_validator(mode="after")
    def _consistent(self):
        if self.quantizer == "modelopt":
            if self.precision not in ("int8", "best"):
                raise ValueError("--quantizer modelopt makes int8: use it with --precision int8 or best")
            if not self.calib:
                raise ValueError("--quantizer modelopt needs calibration data: give --calib DATA")
        if self.runtime == "onnxruntime" and (self.version_compatible or self.hardware_compat != "none"):
            raise ValueError("--version-compatible and --hardware-compat are for the TensorRT runtime; "
                             "ONNX Runtime's TensorRT EP builds plain engines")
        return self


def _tensorrt_target(cfg: EngineConfig, parent: Artifact) -> str:
    from ..targets import get_target, target_names

    name = cfg.target or getattr(parent.manifest.model, "target", None) or getattr(parent.manifest.model, "build", {}).get("target")
    spec = get_target(name or "gpu-server")
    if spec.runtime != "tensorrt":
        if cfg.target is None:  # an artifact exported for a CPU target: profile defaults from gpu-server
            return "gpu-server"
        trt = [n for n in target_names() if get_target(n).runtime == "tensorrt"]
        raise ConfigError(f"target '{cfg.target}' runs ONNX Runtime on the CPU, not TensorRT; engines are for "
                          f"{', '.join(trt)}")
    return spec.name


def _source(parent: Artifact) -> tuple[Path, Optional[str]]:
    """The ONNX file to build from, and its sha256 (from the manifest's file list)."""
    pm = parent.manifest
    if pm.format == "onnx":
        rel = pm.model.file
    elif pm.format == "trt":  # rebuild an engine here from the ONNX it was built from
        rel = pm.model.source
    else:
        raise ConfigError(f"{parent.path}: is format '{pm.format}'; an engine is built from an ONNX artifact: "
                          "run `edgeopt export MODEL --target gpu-server` (or jetson-orin) first")
    return parent.path / rel, pm.files.get(rel)


def profile_for(parent: Artifact, target: str, shapes: list[str]):
    from ..artifact import TextPreprocessing
    from ..targets import get_target
    from ..tensorrt.profiles import derive_profile, parse_shapes

    spec = get_target(target)
    axes = {"batch": list(spec.profiles.batch), "sequence": list(spec.profiles.sequence)}
    pre = parent.manifest.io.preprocessing
    if isinstance(pre, TextPreprocessing):  # the tokenizer never makes longer inputs than max_length
        cap = pre.max_length
        axes["sequence"] = [min(x, cap) for x in axes["sequence"]]
    return derive_profile(parent.manifest.io.inputs, axes, parse_shapes(shapes))


@stage("engine")
def engine(model: Artifact | str | Path, out: str | Path, config: EngineConfig) -> Artifact:
    from ..tensorrt import graph as g

    cfg = config
    parent = model if isinstance(model, Artifact) else load_artifact(model)
    check_output(out, parent, cfg, *([Path(cfg.timing_cache)] if cfg.timing_cache else []))
    src, src_sha = _source(parent)
    target = _tensorrt_target(cfg, parent)
    profile = profile_for(parent, target, cfg.shapes)

    # The graph, checked before any TensorRT work: standard ops, TensorRT's Q/DQ rules, precision.
    g.check_standard_ops(src, target)
    onnx_model = g.load(src)
    graph_precision = g.precision_of(onnx_model)
    if graph_precision == "int8":
        g.check_qdq(onnx_model, src, target)
        if cfg.quantizer == "modelopt":
            raise ConfigError(f"{parent.path} is already quantized (Q/DQ nodes); --quantizer modelopt quantizes a float graph")
        g.require_standard(cfg.precision, onnx_model, src)
    elif cfg.precision == "int8" and cfg.quantizer == "qdq":
        raise ConfigError(f"{parent.path} has no Q/DQ nodes, and TensorRT 10+ takes int8 from them (calibrators are "
                          "deprecated, and gone in TensorRT 11): quantize first (`edgeopt quantize --qat`, or `--ptq static "
                          f"--calib DATA --target {target}`), or pass --quantizer modelopt --calib DATA")
    if graph_precision == "fp16" and cfg.precision == "fp32":
        raise ConfigError(f"{parent.path} is a float16 graph; build it --precision fp16, or export float32 for an fp32 engine")
    if cfg.timing_cache and Path(cfg.timing_cache).expanduser().is_dir():
        raise ConfigError(f"--timing-cache {cfg.timing_cache} is a folder; give a file (created if missing)")

    from ..tensorrt.build import BuildRequest, build_engine, expected_precision
    from ..tensorrt.machine import import_tensorrt, machine

    # TensorRT (exit 2 when missing) and a GPU (exit 1) before any work
    if cfg.runtime == "tensorrt":
        machine(import_tensorrt().__version__)
    else:
        from ..tensorrt.ort_ep import require_ep

        require_ep("building an engine")
        machine()

    with write_artifact(out, parent, cfg) as tmp:
        source = tmp / "source" / "model.onnx"
        source.parent.mkdir()
        shutil.copy2(src, source)
        if src.with_name(src.name + ".data").exists():
            shutil.copy2(src.with_name(src.name + ".data"), source.with_name("model.onnx.data"))
        _copy_preprocessing(parent, tmp)
        build_from = source
        if cfg.quantizer == "modelopt":
            from ..tensorrt.modelopt import quantize_for_tensorrt

            build_from = quantize_for_tensorrt(parent, source, tmp / "work", cfg.calib, cfg.calib_samples)
        request = BuildRequest(onnx=build_from, precision=cfg.precision, profile=profile,
                               workspace_bytes=int(cfg.workspace_gb * (1 << 30)) if cfg.workspace_gb else None,
                               timing_cache=Path(cfg.timing_cache).expanduser() if cfg.timing_cache else None,
                               version_compatible=cfg.version_compatible, hardware_compat=cfg.hardware_compat,
                               workdir=tmp / "work", target=target)
        if cfg.runtime == "onnxruntime":
            from ..tensorrt.ort_ep import build_ep_context

            result = build_ep_context(request, tmp)
        else:
            result = build_engine(request)
            (tmp / "model.engine").write_bytes(result.engine)
        shutil.rmtree(tmp / "work", ignore_errors=True)
        if build_from != source:  # ModelOpt's Q/DQ graph is what was built: keep it as the source
            shutil.move(str(build_from), source)
        key = result.key(onnx_sha256=src_sha or _sha(src), precision=cfg.precision, profile=profile,
                         version_compatible=cfg.version_compatible, hardware_compat=cfg.hardware_compat)
        manifest = parent.manifest.child(
            stage="engine", config=cfg.model_dump(), format="trt",
            model={"precision": cfg.precision, "road": cfg.runtime, "file": result.file, "engine_files": result.engine_files,
                   "source": "source/model.onnx", "source_external_data": source.with_name("model.onnx.data").exists(),
                   "key": key.model_dump(), "layers": result.layer_counts,
                   "build": {"builder": result.road, "flags": result.flags, "target": target,
                             "workspace_gb": cfg.workspace_gb, "timing_cache": bool(cfg.timing_cache),
                             "quantizer": cfg.quantizer, "fp16_cast": result.fp16_cast}})
        if cfg.runtime == "tensorrt":  # ONNX Runtime's EP does not expose the engine's layers
            expected_precision(cfg.precision, graph_precision if cfg.quantizer == "qdq" else "int8", result.layer_counts,
                               road=result.road)
        manifest.metrics = {"size_bytes": sum(f.stat().st_size for f in [tmp / result.file, *(tmp / f for f in result.engine_files)]),
                            "build_seconds": round(result.seconds, 2), "layers": result.layer_counts,
                            "check": _check(parent, Artifact(tmp, manifest), cfg)}
        if result.warnings:
            manifest.metrics["build_warnings"] = result.warnings[:20]
        manifest = finalize(tmp, manifest)
    return load_artifact(Path(out).expanduser().resolve(), verify=False)


def _copy_preprocessing(parent: Artifact, tmp: Path) -> None:
    """The tokenizer folder (text models) travels with the engine: serve needs it."""
    from ..artifact import TextPreprocessing

    pre = parent.manifest.io.preprocessing
    if isinstance(pre, TextPreprocessing) and (parent.path / pre.tokenizer).is_dir():
        shutil.copytree(parent.path / pre.tokenizer, tmp / pre.tokenizer)


def _sha(path: Path) -> str:
    from ..artifact import sha256_file

    return sha256_file(path)


def check_tolerances(precision: str, atol: Optional[float], rtol: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    a, r = TOLERANCES[precision]
    return (atol if atol is not None else a, rtol if rtol is not None else r)


def _check(parent: Artifact, built: Artifact, cfg: EngineConfig) -> dict:
    """The engine against ONNX Runtime on the CPU running the source graph, on the same real inputs."""
    from ..compare import CompareConfig, compare

    atol, rtol = check_tolerances(cfg.precision, cfg.atol, cfg.rtol)
    ref = parent if parent.manifest.format == "onnx" else _source_artifact(parent)
    res = compare(ref, built, CompareConfig(data=cfg.check_data, samples=cfg.check_samples, providers_a=["CPUExecutionProvider"],
                                            **({"atol": atol} if atol is not None else {}),
                                            **({"rtol": rtol} if rtol is not None else {})))
    record = res.model_dump(mode="json")
    failures = judge(cfg.precision, record, allclose=atol is not None)
    if failures:
        raise ValidationError(f"the {cfg.precision} engine disagrees with ONNX Runtime (CPU) on the same inputs", failures)
    return record


def judge(precision: str, record: dict, allclose: bool) -> list[str]:
    """Failures of a comparison record under the precision's rules: allclose for fp32/fp16 (plus
    top-1 agreement), agreement and cosine for int8, where allclose means nothing."""
    failures = []
    for out in record.get("outputs", []):
        name = out.get("name")
        top1, cos = out.get("top1_agreement"), out.get("cosine_min")
        if out.get("shape_b") is not None:
            failures.append(f"{name}: shape {out['shape_b']} != ONNX Runtime's {out.get('shape')}")
        elif allclose and out.get("within_tolerance") is False:
            failures.append(f"{name}: max abs err {out.get('max_abs_err'):.3g}, max rel err {out.get('max_rel_err'):.3g}")
        if top1 is not None and top1 < MIN_TOP1[precision]:
            failures.append(f"{name}: top-1 agreement {top1:.3f} < {MIN_TOP1[precision]}")
        if cos is not None and cos < MIN_COSINE[precision]:
            failures.append(f"{name}: min cosine {cos:.4f} < {MIN_COSINE[precision]}")
    return failures


def _source_artifact(parent: Artifact) -> Artifact:
    """An engine artifact's source graph as an ONNX artifact (same IO, same folder)."""
    from ..artifact import Manifest

    data = parent.manifest.model_dump()
    data.update(format="onnx", model={"format": "onnx", "file": parent.manifest.model.source,
                                      "external_data": parent.manifest.model.source_external_data})
    return Artifact(parent.path, Manifest.model_validate(data))


__all__ = ["EngineConfig", "engine", "profile_for", "judge", "check_tolerances"]
