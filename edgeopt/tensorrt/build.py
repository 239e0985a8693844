"""Build a TensorRT engine from an ONNX file: parse, optimization profile, precision by the road
the installed TensorRT takes, timing cache, serialize, then inspect the built layers.

``build_plan`` (pure) decides flags from the TensorRT version and the request; ``build_engine``
applies it through TensorRT's Python API (``tensorrt`` imported only here and in the runtime).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, InputError, StageError
from .key import EngineKey, Machine, version_tuple
from .profiles import Profile, format_profile


@dataclass
class BuildRequest:
    onnx: Path
    precision: str  # fp32 | fp16 | int8 | best
    profile: Profile
    workspace_bytes: Optional[int] = None
    timing_cache: Optional[Path] = None
    version_compatible: bool = False
    hardware_compat: str = "none"  # none | ampere+
    workdir: Optional[Path] = None  # private scratch (the fp16-cast graph)
    target: str = "gpu-server"
    mark_all: bool = False  # every tensor an output (per-layer comparison); never cached


@dataclass
class BuildPlan:
    road: str  # flags | typed
    network_flags: list[str]
    builder_flags: list[str]
    fp16_cast: bool  # cast the graph to float16 first (typed road)
    hardware_compat: Optional[str] = None  # HardwareCompatibilityLevel member
    notes: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    engine: bytes
    layers: list[Any]
    machine: Machine
    road: str
    flags: list[str]
    fp16_cast: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)
    file: str = "model.engine"
    engine_files: list[str] = field(default_factory=list)

    @property
    def layer_counts(self) -> dict[str, int]:
        from .layers import layer_counts

        return layer_counts({"Layers": self.layers})

    def key(self, *, onnx_sha256: str, precision: str, profile: Profile, version_compatible: bool,
            hardware_compat: str) -> EngineKey:
        m = self.machine
        return EngineKey(onnx_sha256=onnx_sha256, tensorrt=m.tensorrt, gpu=m.gpu, compute_capability=m.compute_capability,
                         cuda=m.cuda, profiles=profile, precision=precision, version_compatible=version_compatible,
                         hardware_compat=hardware_compat)


def build_plan(version: str, precision: str, graph_precision: str, *, version_compatible: bool = False,
               hardware_compat: str = "none", jetson: bool = False) -> BuildPlan:
    """How to get ``precision`` out of TensorRT ``version`` for a graph that is ``graph_precision``
    (fp32, fp16 = float16 weights, int8 = Q/DQ nodes)."""
    from .machine import road as road_of

    road = road_of(version)
    v = version_tuple(version)
    notes: list[str] = []
    network: list[str] = []
    builder: list[str] = []
    cast = False
    if road == "flags":
        if v[0] < 10:
            network.append("EXPLICIT_BATCH")  # implicit batch is gone in 10; 8.6 needs explicit batch for ONNX
        if precision in ("fp16", "best") or graph_precision == "fp16":
            builder.append("FP16")
        if precision in ("int8", "best") and graph_precision == "int8":
            builder.append("INT8")  # explicit quantization: scales come from the Q/DQ nodes
        if precision == "best" and graph_precision != "int8":
            notes.append("best without Q/DQ nodes is fp16: int8 comes from a quantized graph")
    else:
        network.append("STRONGLY_TYPED")  # the only mode in 11; precision flags no longer exist
        if precision in ("fp16", "best") and graph_precision != "fp16":
            cast = True
        if precision == "best" and graph_precision != "int8":
            notes.append("best without Q/DQ nodes is fp16: int8 comes from a quantized graph")
    if version_compatible:
        builder.append("VERSION_COMPATIBLE")
    hw = None
    if hardware_compat == "ampere+":
        if jetson:
            raise ConfigError("--hardware-compat ampere+ is not available on Jetson (Orin and Thor engines are built for "
                              "their own GPU); build without it")
        hw = "AMPERE_PLUS"
    return BuildPlan(road=road, network_flags=network, builder_flags=builder, fp16_cast=cast, hardware_compat=hw, notes=notes)


def expected_precision(precision: str, graph_precision: str, counts: dict[str, int], *, road: str) -> None:
    """Fail when the engine lacks the precision asked for (an 11.x builder asked for fp16 by flag
    builds fp32 without a word; a Q/DQ pair TensorRT could not fuse runs in float)."""
    if not counts:
        raise StageError("the engine's layer information is empty, so its precision cannot be checked "
                         "(built without detailed profiling verbosity?)")
    want = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}.get(precision)
    if precision == "best":
        want = "int8" if graph_precision == "int8" else "fp16"
    if want == "fp32":
        lower = {p: n for p, n in counts.items() if p in ("fp16", "bf16", "int8", "fp8", "int4")}
        if lower:
            raise StageError(f"an fp32 engine was asked for, but {', '.join(f'{n} layers run {p}' for p, n in lower.items())}")
        return
    if not counts.get(want):
        got = ", ".join(f"{n} {p}" for p, n in counts.items())
        how = ("the graph must carry it: fp16 casts or Q/DQ nodes (TensorRT 11 has no precision flags)" if road == "typed"
               else "TensorRT chose other kernels for every layer (faster or unsupported in that precision)")
        raise StageError(f"the built engine has no {want} layers ({got}); {how}")


class _Logger:
    """TensorRT's ILogger, keeping warnings and errors for messages and the manifest."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: list[tuple[str, str]] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.WARNING):  # INTERNAL_ERROR=0, ERROR=1, WARNING=2
                    level = "error" if int(severity) <= int(trt.ILogger.Severity.ERROR) else "warning"
                    self.messages.append((level, str(msg)))

        return Logger()


def _parser_errors(parser) -> list[dict[str, Any]]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)

        def get(attr: str, default: Any = None) -> Any:
            fn = getattr(e, attr, None)
            try:
                return fn() if callable(fn) else default
            except Exception:  # older parsers lack some accessors
                return default

        out.append({"node": get("node", -1), "name": get("node_name"), "op": get("node_operator"),
                    "desc": get("desc", str(e)), "code": str(get("code", ""))})
    return out


def build_engine(req: BuildRequest) -> BuildResult:
    from . import graph as g
    from .machine import import_tensorrt, machine

    trt = import_tensorrt()
    here = machine(trt.__version__)
    model = g.load(req.onnx)
    graph_precision = g.precision_of(model)
    plan = build_plan(trt.__version__, req.precision, graph_precision, version_compatible=req.version_compatible,
                      hardware_compat=req.hardware_compat, jetson=here.jetson)
    onnx_path = req.onnx
    if plan.fp16_cast:
        from ..formats.onnx import save_onnx  # writes external data above protobuf's 2 GiB

        workdir = req.workdir or req.onnx.parent
        workdir.mkdir(parents=True, exist_ok=True)
        onnx_path = workdir / "fp16.onnx"
        save_onnx(g.cast_fp16(model), onnx_path)
    del model

    t0 = time.perf_counter()
    logger = _Logger(trt)
    builder = trt.Builder(logger)
    trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own plugins, for ONNX ops it implements as plugins
    flags = 0
    for name in plan.network_flags:  # never integers: STRONGLY_TYPED is 1 in 10.x and 0 in 11.x (where it is the default)
        if hasattr(trt.NetworkDefinitionCreationFlag, name):
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise InputError(g.format_parser_errors(_parser_errors(parser), req.onnx, req.target))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    missing = [t.name for t in inputs if t.name not in req.profile and any(d < 0 for d in t.shape)]
    if missing:
        raise ConfigError(f"dynamic input(s) {', '.join(missing)} have no profile; give --shapes NAME:MIN:OPT:MAX")
    if req.mark_all:
        _mark_all(trt, network)

    config = builder.create_builder_config()
    if req.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.hardware_compat:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, plan.hardware_compat)
    profile = builder.create_optimization_profile()
    names = {t.name for t in inputs}
    for name, (lo, opt, hi) in req.profile.items():
        if name in names:
            profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_bytes = req.timing_cache.read_bytes() if req.timing_cache and req.timing_cache.is_file() and not req.mark_all else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    errors = [m for level, m in logger.messages if level == "error"]
    if serialized is None:
        raise StageError(f"TensorRT {trt.__version__} could not build the engine for {req.onnx} "
                         f"(profiles {format_profile(req.profile)}): {errors[-1] if errors else 'no reason given'}")
    engine_bytes = bytes(serialized)
    if req.timing_cache and not req.mark_all:
        _write_atomic(req.timing_cache, bytes(config.get_timing_cache().serialize()))
    layers = inspect_layers(trt, engine_bytes, logger, req.version_compatible, req.profile)
    return BuildResult(engine=engine_bytes, layers=layers, machine=here, road=plan.road,
                       flags=[*plan.network_flags, *plan.builder_flags, *([f"hardware:{plan.hardware_compat}"] if plan.hardware_compat else [])],
                       fp16_cast=plan.fp16_cast, seconds=time.perf_counter() - t0,
                       warnings=[*plan.notes, *[m for level, m in logger.messages if level == "warning"]])


def _mark_all(trt, network) -> None:
    """Make every layer's float output a network output (Polygraphy's `--trt-outputs mark all`)."""
    float_types = {trt.float32, trt.float16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            t = layer.get_output(j)
            if not t.is_network_output and t.dtype in float_types:
                network.mark_output(t)


def inspect_layers(trt, engine_bytes: bytes, logger, version_compatible: bool, profile: Profile) -> list[Any]:
    """The engine's layers with their tensors' formats: an execution context with the profile's opt
    shapes is attached, else a dynamic-shape engine reports "N/A due to dynamic shapes"."""
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise StageError("TensorRT built an engine it cannot load back")
    context = engine.create_execution_context()
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and name in profile:
            context.set_input_shape(name, profile[name][1])
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return info.get("Layers", []) if isinstance(info, dict) else list(info)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
