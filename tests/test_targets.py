"""Deployment targets shipped as YAML files."""
from __future__ import annotations

import platform

import pytest
import yaml

from _support import REPO
from edgeopt.errors import ConfigError, TargetError
from edgeopt.targets import TargetSpec, get_target, target_names

TARGET_FILES = sorted((REPO / "targets").glob("*.yaml"))


def test_target_names_match_files():
    assert target_names() == sorted(p.stem for p in TARGET_FILES)
    assert {"x86", "rpi", "jetson", "gpu-server"} <= set(target_names())


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: p.stem)
def test_every_target_file_loads(path):
    t = get_target(path.stem)
    assert isinstance(t, TargetSpec)
    assert t.name == path.stem  # the name inside the file matches the file name
    assert t.providers and t.providers[-1] == "CPUExecutionProvider"
    assert TargetSpec.model_validate(yaml.safe_load(path.read_text())) == t
    assert isinstance(t.reduce_range(), bool)


@pytest.mark.parametrize("name", ["jetson", "gpu-server"])
def test_tensorrt_targets_are_symmetric_int8(name):
    t = get_target(name)
    q = t.quantization
    assert t.runtime == "tensorrt"
    assert (q.activation_type, q.weight_type, q.activation_symmetric, q.weight_symmetric) == ("int8", "int8", True, True)
    assert t.reduce_range() is False


def test_cpu_targets():
    x86, rpi = get_target("x86"), get_target("rpi")
    assert (x86.runtime, x86.arch, x86.quantization.activation_type) == ("onnxruntime", "amd64", "uint8")
    assert (rpi.runtime, rpi.arch, rpi.quantization.activation_type) == ("onnxruntime", "arm64", "int8")
    assert rpi.session_config.get("session.intra_op.allow_spinning") == "0"


def test_host_target():
    expected = "rpi" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
    assert get_target(None).name == expected
    assert get_target("host").name == expected


def test_unknown_target_lists_valid_names():
    with pytest.raises(TargetError) as ei:
        get_target("toaster")
    msg = str(ei.value)
    assert "unknown target 'toaster'" in msg
    for name in target_names():
        assert name in msg
    assert isinstance(ei.value, ConfigError) and ei.value.exit_code == 2
