"""Deployment targets, one YAML profile each in targets/ (shipped as edgeopt._targets).

A profile says what a device runs: architecture and platform, OS, Python, the runtime packages
pinned for its image, execution providers and session options, how to export for it (opset,
which fusions its runtime has), its int8 format, its engine policy and its serving image.
"""
from __future__ import annotations

import platform
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError, TargetError

_Strict = ConfigDict(extra="forbid")


class QuantSpec(BaseModel):
    model_config = _Strict
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["uint8", "int8"] = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    reduce_range: Union[bool, Literal["auto"]] = False
    per_channel: Optional[bool] = None  # None: follow the command's option
    quantize_bias: bool = True  # int32 bias Q/DQ; TensorRT wants biases left in float


class DeviceSpec(BaseModel):
    """What the device is: shown by `edgeopt targets show`, used for emulation (qemu_cpu)."""
    model_config = _Strict
    cpu: str
    cores: Optional[int] = Field(None, ge=1)
    cpu_features: list[str] = Field(default_factory=list)  # e.g. asimddp: the int8 dot product (SDOT)
    gpu: Optional[str] = None
    memory_gb: Optional[float] = Field(None, gt=0)
    qemu_cpu: Optional[str] = None  # QEMU_CPU for emulated runs of arm64 images


class StackSpec(BaseModel):
    """The vendor stack an image's base must hold (GPU targets)."""
    model_config = _Strict
    jetpack: Optional[str] = None
    l4t: Optional[str] = None
    cuda: Optional[str] = None
    tensorrt: Optional[str] = None


class ExportSpec(BaseModel):
    model_config = _Strict
    opset: int = Field(17, ge=13, le=23)
    # onnxruntime: ONNX Runtime's transformer fusions (com.microsoft ops); none: standard ONNX ops
    # only, with basic hardware-independent rewrites (what TensorRT's ONNX parser reads).
    fusions: Literal["onnxruntime", "none"] = "onnxruntime"
    dtype: Literal["float32", "float16"] = "float32"
    max_opset: Optional[int] = Field(None, ge=13)  # the newest opset the target's runtime parses


class EngineSpec(BaseModel):
    model_config = _Strict
    # none: the runtime executes the ONNX file; build-on-device: TensorRT engines are built on the
    # device at first start (they are bound to the TensorRT version and the GPU) into cache_dir,
    # a mounted volume, and reused while the model, TensorRT and GPU stay the same.
    policy: Literal["none", "build-on-device"] = "none"
    cache_dir: Optional[str] = None
    precision: Literal["fp32", "fp16", "int8", "best"] = "fp16"  # of float graphs; Q/DQ graphs build "best"

    @model_validator(mode="after")
    def _cache(self):
        if self.policy == "build-on-device" and not self.cache_dir:
            raise ValueError("engine.cache_dir is required with policy build-on-device")
        return self


class ProfileSpec(BaseModel):
    """TensorRT optimization-profile defaults for the named dynamic axes: [min, opt, max]."""
    model_config = _Strict
    batch: list[int] = Field(default_factory=lambda: [1, 8, 32], min_length=3, max_length=3)
    sequence: list[int] = Field(default_factory=lambda: [1, 128, 512], min_length=3, max_length=3)

    @field_validator("batch", "sequence")
    @classmethod
    def _ordered(cls, v):
        if not (1 <= v[0] <= v[1] <= v[2]):
            raise ValueError(f"{v}: give [min, opt, max] with 1 <= min <= opt <= max")
        return v


class ResourceSpec(BaseModel):
    model_config = _Strict
    memory_mb: Optional[int] = Field(None, ge=64)  # a sensible container memory limit
    cpus: Optional[float] = Field(None, gt=0)
    gpus: Optional[int] = Field(None, ge=0)


class DockerSpec(BaseModel):
    model_config = _Strict
    base_image: str  # overridable: edgeopt package --base-image
    platform: Literal["linux/amd64", "linux/arm64"]
    template: Literal["cpu", "gpu"] = "cpu"  # docker/Dockerfile.<template>
    runtime: Optional[Literal["nvidia"]] = None  # container runtime the device starts it with


class TargetSpec(BaseModel):
    model_config = _Strict
    name: str
    aliases: list[str] = Field(default_factory=list)
    description: str = ""
    arch: Literal["amd64", "arm64"]
    os: str
    python: str = Field(pattern=r"^3\.\d+$")
    glibc: str = Field(pattern=r"^2\.\d+$")  # the oldest glibc of the target's OS: newest manylinux tag allowed
    device: DeviceSpec
    stack: StackSpec = Field(default_factory=StackSpec)
    runtime: Literal["onnxruntime", "tensorrt"]
    packages: list[str] = Field(default_factory=list)  # pinned runtime packages of the image
    package_index: Optional[str] = None  # where those come from when not PyPI (Jetson)
    providers: list[str]
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    threads: Optional[int] = Field(None, ge=1)
    session_config: dict[str, str] = Field(default_factory=dict)
    export: ExportSpec = Field(default_factory=ExportSpec)
    quantization: QuantSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    profiles: Optional[ProfileSpec] = None
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    docker: Optional[DockerSpec] = None  # None: no serving image for this target (says why in its file)

    @field_validator("packages")
    @classmethod
    def _pinned(cls, v):
        for req in v:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9_.+\-]*", req):
                raise ValueError(f"package '{req}' must be pinned as NAME==VERSION")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.providers[-1:] != ["CPUExecutionProvider"]:
            raise ValueError("providers must end with CPUExecutionProvider (the fallback)")
        if self.runtime == "tensorrt":
            if self.export.fusions != "none":
                raise ValueError("TensorRT targets export standard ONNX ops only (export.fusions: none)")
            q = self.quantization
            if not (q.activation_symmetric and q.weight_symmetric and q.activation_type == "int8"):
                raise ValueError("TensorRT takes symmetric int8 only (zero point 0)")
            if self.profiles is None:
                raise ValueError("TensorRT targets need optimization-profile defaults (profiles)")
        if self.docker is not None:
            if self.docker.platform != f"linux/{self.arch}":
                raise ValueError(f"docker.platform {self.docker.platform} does not match arch {self.arch}")
            if not self.packages:
                raise ValueError("a target with an image needs its runtime packages")
        return self

    @property
    def platform(self) -> str:
        return f"linux/{self.arch}"

    def reduce_range(self) -> bool:
        rr = self.quantization.reduce_range
        return (not cpu_has_vnni()) if rr == "auto" else bool(rr)

    def wheel_platforms(self) -> list[str]:
        """pip's --platform tags for the target's glibc, newest first (manylinux_2_17 = manylinux2014)."""
        machine = {"amd64": "x86_64", "arm64": "aarch64"}[self.arch]
        top = int(self.glibc.split(".")[1])
        return [f"manylinux_2_{minor}_{machine}" for minor in range(top, 16, -1)] + [f"manylinux2014_{machine}"]


def _target_files() -> dict[str, Path]:
    root = resources.files("edgeopt._targets")
    return {Path(str(f)).stem: Path(str(f)) for f in root.iterdir() if str(f).endswith(".yaml")}


@lru_cache(maxsize=None)
def _aliases() -> dict[str, str]:
    """alias -> target name, read from the profiles (rpi -> rpi5, jetson -> jetson-orin)."""
    out = {}
    for name, path in _target_files().items():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        for a in data.get("aliases") or []:
            if str(a) in out or str(a) in _target_files() or a == "host":
                raise ConfigError(f"{path}: alias '{a}' is already a target name or another profile's alias")
            out[str(a)] = name
    return out


def target_names(aliases: bool = False) -> list[str]:
    """The profiles' names (with ``aliases``: their aliases too, e.g. for CLI choices)."""
    names = sorted(_target_files())
    return sorted([*names, *_aliases()]) if aliases else names


def resolve_name(name: Optional[str]) -> str:
    """A target's canonical name: 'host' / None pick this machine's CPU target; aliases resolve."""
    if name in (None, "host"):
        return "rpi5" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
    return _aliases().get(name, name)


@lru_cache(maxsize=None)
def get_target(name: Optional[str] = None) -> TargetSpec:
    """A target by name or alias; ``None`` or 'host' picks the CPU target matching this machine."""
    canonical = resolve_name(name)
    files = _target_files()
    if canonical not in files:
        valid = ", ".join(target_names())
        al = ", ".join(f"{a} = {n}" for a, n in sorted(_aliases().items()))
        raise TargetError(f"unknown target '{name}'; choose one of: {valid} (aliases: {al}; or 'host')")
    try:
        spec = TargetSpec.model_validate(yaml.safe_load(files[canonical].read_text()))
    except Exception as e:
        raise ConfigError(f"{files[canonical]}: invalid target file ({_first_error(e)})") from e
    if spec.name != canonical:
        raise ConfigError(f"{files[canonical]}: the profile's name '{spec.name}' differs from its file name")
    return spec


def _first_error(e: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        return f"{loc}: {err['msg'].removeprefix('Value error, ')}" if loc else err["msg"].removeprefix("Value error, ")
    return str(e).splitlines()[0]


@lru_cache(maxsize=None)
def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


# Ops TensorRT's ONNX parser does not take: ONNX Runtime's integer-arithmetic forms of quantization
# (dynamic quantization's MatMulInteger, the QOperator format). TensorRT reads int8 as Q/DQ pairs.
TENSORRT_REJECTS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv",
                    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
                    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax"}
STANDARD_DOMAINS = {"", "ai.onnx"}
ORT_CPU_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc"}


def unsupported_ops(spec: TargetSpec, model_path: Path) -> Optional[list[str]]:
    """Ops of an ONNX graph that the target's runtime cannot run, one line per reason naming each op
    (with a node using it) and the fix; [] when it can run them all, None when the onnx package (an extra) is absent."""
    try:
        import onnx
    except ImportError:
        return None

    model = onnx.load(str(model_path), load_external_data=False)
    nodes = list(model.graph.node)
    for fn in model.functions:  # local functions (dynamo exports) hold nodes too
        nodes.extend(fn.node)
    local = {(f.domain, f.name) for f in model.functions}
    # why -> {op: "op X (node 'n')"}: each reason and its fix is said once, with every op it covers
    why_fix = {
        "contrib": ("ONNX Runtime contrib ops, which TensorRT cannot parse",
                    f"re-export with `edgeopt export MODEL --target {spec.name}` (no fusions)"),
        "integer": ("ONNX Runtime's integer quantization, which TensorRT cannot run",
                    f"quantize with `edgeopt quantize --ptq static --calib DATA --target {spec.name}` (Q/DQ) or `--qat`"),
        "custom": ("custom ops that ONNX Runtime's CPU provider does not have", "export the model without them"),
    }
    found: dict[str, dict[str, str]] = {}
    for n in nodes:
        if (n.domain, n.op_type) in local:
            continue
        op = f"{n.domain}.{n.op_type}" if n.domain not in STANDARD_DOMAINS else n.op_type
        if spec.runtime == "tensorrt":
            why = "contrib" if n.domain not in STANDARD_DOMAINS else "integer" if n.op_type in TENSORRT_REJECTS else None
        else:
            why = "custom" if n.domain not in ORT_CPU_DOMAINS else None
        if why is not None:
            found.setdefault(why, {}).setdefault(op, f"op {op} (node '{n.name}')")
    problems = {why: f"{', '.join(ops.values())}: {why_fix[why][0]}; {why_fix[why][1]}" for why, ops in found.items()}
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    if spec.export.max_opset is not None and opset is not None and opset > spec.export.max_opset:
        problems["opset"] = (f"opset {opset} is newer than target '{spec.name}' parses ({spec.export.max_opset}); "
                             f"re-export with --opset {spec.export.max_opset}")
    return list(problems.values())
