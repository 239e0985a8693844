"""Deployment targets, one YAML file each in targets/ (shipped as edgeopt._targets)."""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError, TargetError


class QuantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["uint8", "int8"] = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    reduce_range: Union[bool, Literal["auto"]] = False
    per_channel: Optional[bool] = None  # None: follow the command's option
    quantize_bias: bool = True  # int32 bias Q/DQ; TensorRT wants biases left in float


class DockerSpec(BaseModel):
    base_image: str
    platform: str


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    arch: Literal["amd64", "arm64"]
    runtime: Literal["onnxruntime", "tensorrt"]
    providers: list[str]
    threads: Optional[int] = None
    session_config: dict[str, str] = Field(default_factory=dict)
    quantization: QuantSpec
    docker: Optional[DockerSpec] = None

    def reduce_range(self) -> bool:
        rr = self.quantization.reduce_range
        return (not cpu_has_vnni()) if rr == "auto" else bool(rr)


def _target_files() -> dict[str, Path]:
    root = resources.files("edgeopt._targets")
    return {Path(str(f)).stem: Path(str(f)) for f in root.iterdir() if str(f).endswith(".yaml")}


def target_names() -> list[str]:
    return sorted(_target_files())


@lru_cache(maxsize=None)
def get_target(name: Optional[str] = None) -> TargetSpec:
    """A target by name; ``None`` or 'host' picks the CPU target matching this machine."""
    if name in (None, "host"):
        name = "rpi" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
    files = _target_files()
    if name not in files:
        raise TargetError(f"unknown target '{name}'; choose one of: {', '.join(sorted(files))} (or 'host')")
    try:
        return TargetSpec.model_validate(yaml.safe_load(files[name].read_text()))
    except Exception as e:
        raise ConfigError(f"{files[name]}: invalid target file ({str(e).splitlines()[0]})") from e


@lru_cache(maxsize=None)
def cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
