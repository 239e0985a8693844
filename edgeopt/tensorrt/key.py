"""Engine keys: what a TensorRT engine is bound to, and whether this machine may run it.

A serialized engine holds kernels chosen for one TensorRT version and one GPU architecture.
Unless it was built version-compatible (it then runs on later TensorRT of the same major) or
hardware-compatible (``ampere+``: any Ampere or newer data-centre/desktop GPU, not Jetson), it
only runs where it was built. The key records all of it in the manifest; loading compares it with
this machine and says, in one line, what differs and how to rebuild.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from ..errors import EdgeoptError

HardwareCompat = Literal["none", "ampere+"]


class EngineMismatch(EdgeoptError):
    """An engine built for another TensorRT or GPU (exit 1: the fix is a rebuild, not a new option)."""


class Machine(BaseModel):
    """This machine's facts that an engine depends on."""
    model_config = ConfigDict(extra="forbid")
    tensorrt: str  # e.g. 10.13.0.35
    gpu: str  # e.g. NVIDIA H100 80GB HBM3
    compute_capability: str  # e.g. 9.0
    cuda: Optional[str] = None  # CUDA runtime the TensorRT build uses, e.g. 13.0
    jetson: bool = False  # an integrated Tegra GPU (Orin, Thor): no hardware-compatible engines


class EngineKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    cuda: Optional[str] = None
    profiles: dict[str, list[list[int]]]
    precision: str
    version_compatible: bool = False
    hardware_compat: HardwareCompat = "none"

    def digest(self) -> str:
        """Stable id of the key (the engine cache's folder name)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split(".")[:4]:
        m = re.match(r"\d+", part)  # "0b6" (a beta) is 0, not 6
        out.append(int(m.group()) if m else 0)
    return tuple(out)


def _sm(cc: str) -> str:
    return "sm_" + cc.replace(".", "")


def differences(key: EngineKey, here: Machine) -> list[str]:
    """What keeps this machine from running an engine with ``key`` ([] when it can)."""
    out = []
    built, now = version_tuple(key.tensorrt), version_tuple(here.tensorrt)
    if key.version_compatible:
        if now[:1] != built[:1] or now[:3] < built[:3]:
            out.append(f"TensorRT {here.tensorrt} here, and a version-compatible engine from {key.tensorrt} runs only on "
                       f"TensorRT {built[0]}.x from {'.'.join(map(str, built[:3]))} on")
    elif now[:3] != built[:3]:
        out.append(f"TensorRT {here.tensorrt} here, {key.tensorrt} at build")
    if key.hardware_compat == "ampere+":
        if here.jetson or version_tuple(here.compute_capability) < (8, 0):
            out.append(f"GPU {here.gpu} ({_sm(here.compute_capability)}) here; a hardware-compatible (ampere+) engine runs "
                       "only on Ampere or newer discrete GPUs")
    elif here.compute_capability != key.compute_capability:
        out.append(f"GPU {here.gpu} ({_sm(here.compute_capability)}) here, {key.gpu} ({_sm(key.compute_capability)}) at build")
    if key.cuda and here.cuda and key.cuda.split(".")[0] != here.cuda.split(".")[0]:
        out.append(f"CUDA {here.cuda} here, {key.cuda} at build")
    return out


def check_key(key: EngineKey, here: Machine, *, engine: str, rebuild: str) -> list[str]:
    """Raise EngineMismatch naming every difference and the rebuild command; return warnings
    (the same architecture on another GPU model runs, possibly slower)."""
    diffs = differences(key, here)
    if diffs:
        raise EngineMismatch(f"{engine} cannot run on this machine: {'; '.join(diffs)}. Engines are bound to the TensorRT "
                             f"version and the GPU: rebuild it here with `{rebuild}`"
                             + ("" if key.version_compatible else " (or build it --version-compatible to move between "
                                "TensorRT releases of one major)"))
    warnings = []
    if key.hardware_compat == "none" and here.gpu != key.gpu:
        warnings.append(f"{engine} was built on {key.gpu}, this is {here.gpu} (same architecture "
                        f"{_sm(key.compute_capability)}): it runs, but its kernels were timed on the other GPU; "
                        "rebuild here for best speed")
    return warnings
