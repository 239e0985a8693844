"""Deployment targets shipped as YAML profiles (targets/*.yaml): their schema, the facts they pin,
the graph checks per runtime, and the `edgeopt targets` commands."""
from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError as PydanticValidationError

from _support import EDGEOPT_BIN, REPO
from edgeopt import targets as targets_mod
from edgeopt.errors import ConfigError, TargetError
from edgeopt.targets import TargetSpec, get_target, resolve_name, target_names, unsupported_ops

TARGET_FILES = sorted((REPO / "targets").glob("*.yaml"))
PROFILES = {"x86", "gpu-server", "jetson-orin", "jetson-thor", "jetson-xavier", "rpi4", "rpi5"}
ALIASES = {"rpi": "rpi5", "jetson": "jetson-orin"}
TENSORRT = ["gpu-server", "jetson-orin", "jetson-thor", "jetson-xavier"]
CPU = ["x86", "rpi4", "rpi5"]


def cli(*args, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEOPT_QUIET": "1"}
    env.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], check=False, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def raw(name: str) -> dict:
    """A real profile as the dict its YAML file holds (a fresh copy each call)."""
    return copy.deepcopy(yaml.safe_load((REPO / "targets" / f"{name}.yaml").read_text()))


# ---------------------------------------------------------------------------------------------
# the set of profiles, names and aliases
# ---------------------------------------------------------------------------------------------

def test_profiles_are_exactly_the_seven():
    assert {p.stem for p in TARGET_FILES} == PROFILES
    assert set(target_names()) == PROFILES
    assert target_names() == sorted(PROFILES)
    # the old single-file names are aliases now, not files
    assert not (REPO / "targets" / "rpi.yaml").exists() and not (REPO / "targets" / "jetson.yaml").exists()


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: p.stem)
def test_every_target_file_validates(path):
    data = yaml.safe_load(path.read_text())
    spec = TargetSpec.model_validate(data)
    assert spec.name == path.stem  # the name inside the file matches the file name
    t = get_target(path.stem)
    assert isinstance(t, TargetSpec) and t == spec
    assert t.providers and t.providers[-1] == "CPUExecutionProvider"
    assert isinstance(t.reduce_range(), bool)
    assert t.platform == f"linux/{t.arch}"
    # a dump validates back to the same profile (what `targets show --json` prints is a valid profile)
    assert TargetSpec.model_validate(t.model_dump(mode="json")) == t


def test_aliases_resolve():
    for alias, name in ALIASES.items():
        assert resolve_name(alias) == name
        assert get_target(alias).name == name
        assert get_target(alias) == get_target(name)
        assert alias in get_target(name).aliases
    assert set(target_names(aliases=True)) == PROFILES | set(ALIASES)
    assert target_names(aliases=True) == sorted(PROFILES | set(ALIASES))
    for name in PROFILES:  # a canonical name resolves to itself
        assert resolve_name(name) == name


def test_no_alias_collides_with_a_name_or_another_alias():
    seen: dict[str, str] = {}
    for name in target_names():
        for alias in get_target(name).aliases:
            assert alias not in PROFILES, f"alias '{alias}' of {name} is a profile name"
            assert alias not in seen, f"alias '{alias}' is claimed by {seen.get(alias)} and {name}"
            assert alias not in ("host",)
            seen[alias] = name
    assert seen == ALIASES


def test_host_target():
    expected = "rpi5" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
    assert resolve_name(None) == resolve_name("host") == expected
    assert get_target(None).name == expected
    assert get_target("host").name == expected


def test_unknown_target_lists_valid_names_and_aliases():
    with pytest.raises(TargetError) as ei:
        get_target("toaster")
    msg = str(ei.value)
    assert "unknown target 'toaster'" in msg
    for name in target_names():
        assert name in msg
    for alias, name in ALIASES.items():
        assert f"{alias} = {name}" in msg
    assert "\n" not in msg
    assert isinstance(ei.value, ConfigError) and ei.value.exit_code == 2


# ---------------------------------------------------------------------------------------------
# validation rules of TargetSpec (modified copies of real profiles)
# ---------------------------------------------------------------------------------------------

def _invalid(data: dict, match: str) -> None:
    with pytest.raises(PydanticValidationError, match=match):
        TargetSpec.model_validate(data)


@pytest.mark.parametrize("req", ["onnxruntime>=1.2", "onnxruntime", "onnxruntime~=1.31", "onnxruntime==", "onnxruntime==latest"])
def test_packages_must_be_pinned(req):
    d = raw("rpi5")
    d["packages"] = [req]
    _invalid(d, "must be pinned as NAME==VERSION")


def test_pinned_packages_validate():
    d = raw("rpi5")
    d["packages"] = ["onnxruntime==1.31.1", "numpy==2.2.6", "tokenizers==0.22.1+local"]
    assert TargetSpec.model_validate(d).packages == d["packages"]


def test_docker_platform_must_match_arch():
    d = raw("rpi5")
    d["docker"]["platform"] = "linux/amd64"
    _invalid(d, "does not match arch")
    d = raw("x86")
    d["docker"]["platform"] = "linux/arm64"
    _invalid(d, "does not match arch")


def test_image_needs_packages():
    d = raw("x86")
    d["packages"] = []
    _invalid(d, "needs its runtime packages")


@pytest.mark.parametrize("providers", [["CUDAExecutionProvider"], ["CPUExecutionProvider", "CUDAExecutionProvider"], []])
def test_providers_must_end_with_cpu(providers):
    d = raw("gpu-server")
    d["providers"] = providers
    _invalid(d, "CPUExecutionProvider")


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_rejects_onnxruntime_fusions(name):
    d = raw(name)
    d["export"]["fusions"] = "onnxruntime"
    _invalid(d, "standard ONNX ops only")


@pytest.mark.parametrize("change", [
    {"activation_symmetric": False},
    {"weight_symmetric": False},
    {"activation_type": "uint8"},
], ids=["asym-activations", "asym-weights", "uint8-activations"])
def test_tensorrt_rejects_asymmetric_int8(change):
    d = raw("gpu-server")
    d["quantization"].update(change)
    _invalid(d, "symmetric int8 only")


def test_tensorrt_needs_profiles():
    d = raw("jetson-orin")
    d.pop("profiles")
    _invalid(d, "profiles")


def test_cpu_target_may_be_asymmetric():
    d = raw("x86")
    assert d["quantization"]["activation_symmetric"] is False
    assert TargetSpec.model_validate(d).runtime == "onnxruntime"


@pytest.mark.parametrize("where", ["top", "export", "quantization", "docker", "device", "engine"])
def test_unknown_keys_are_rejected(where):
    d = raw("rpi5")
    (d if where == "top" else d[where])["turbo"] = True
    _invalid(d, "turbo|Extra inputs")


@pytest.mark.parametrize("field,value", [
    ("arch", "riscv64"), ("python", "3"), ("glibc", "2"), ("runtime", "tflite"), ("threads", 0),
])
def test_bad_values_are_rejected(field, value):
    d = raw("rpi5")
    d[field] = value
    with pytest.raises(PydanticValidationError):
        TargetSpec.model_validate(d)


def test_engine_build_on_device_needs_cache_dir():
    d = raw("gpu-server")
    d["engine"] = {"policy": "build-on-device"}
    _invalid(d, "cache_dir")


@pytest.mark.parametrize("axis,value", [("batch", [8, 1, 32]), ("sequence", [0, 128, 512]), ("batch", [1, 8])])
def test_profiles_must_be_ordered_triples(axis, value):
    d = raw("gpu-server")
    d["profiles"][axis] = value
    with pytest.raises(PydanticValidationError):
        TargetSpec.model_validate(d)


@pytest.fixture
def fake_targets(tmp_path, monkeypatch):
    """A targets folder of our own in place of the shipped one (caches cleared before and after)."""
    def clear():
        get_target.cache_clear()
        targets_mod._aliases.cache_clear()

    clear()
    monkeypatch.setattr(targets_mod, "_target_files", lambda: {p.stem: p for p in tmp_path.glob("*.yaml")})
    yield tmp_path
    monkeypatch.undo()
    clear()


def test_invalid_file_is_a_config_error_naming_it(fake_targets):
    d = raw("rpi5")
    d["packages"] = ["onnxruntime>=1.2"]
    path = fake_targets / "rpi5.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as ei:
        get_target("rpi5")
    msg = str(ei.value)
    assert str(path) in msg and "packages" in msg and "pinned" in msg
    assert ei.value.exit_code == 2


def test_name_must_match_file_name(fake_targets):
    (fake_targets / "pi5.yaml").write_text(yaml.safe_dump(raw("rpi5")))
    with pytest.raises(ConfigError, match="differs from its file name"):
        get_target("pi5")


def test_aliases_are_read_from_the_profiles(fake_targets):
    d = raw("x86")
    d["aliases"] = ["pc", "desktop"]
    (fake_targets / "x86.yaml").write_text(yaml.safe_dump(d))
    assert target_names() == ["x86"]
    assert target_names(aliases=True) == ["desktop", "pc", "x86"]
    assert get_target("pc").name == "x86"


# ---------------------------------------------------------------------------------------------
# facts the profiles must state
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rpi4", "rpi5"])
def test_raspberry_pi_profiles(name):
    t = get_target(name)
    assert (t.arch, t.python, t.threads, t.runtime) == ("arm64", "3.11", 4, "onnxruntime")
    assert t.session_config.get("session.intra_op.allow_spinning") == "0"
    assert t.providers == ["CPUExecutionProvider"]
    assert t.export.fusions == "onnxruntime"
    ort = [p for p in t.packages if p.startswith("onnxruntime==")]
    assert len(ort) == 1, t.packages
    # aarch64 onnxruntime 1.21.0 dies with an illegal instruction on the A72, 1.29.0 segfaults in slim images
    assert ort[0] not in ("onnxruntime==1.21.0", "onnxruntime==1.29.0")
    assert t.docker is not None and t.docker.platform == "linux/arm64"
    assert t.device.qemu_cpu is not None


def test_rpi5_has_the_int8_dot_product_and_rpi4_does_not():
    assert "asimddp" in get_target("rpi5").device.cpu_features
    assert "asimddp" not in get_target("rpi4").device.cpu_features


def test_jetson_orin_stack():
    t = get_target("jetson-orin")
    assert (t.stack.l4t, t.stack.cuda, t.stack.tensorrt) == ("r36.4", "12.6", "10.3")
    assert t.python == "3.10" and t.arch == "arm64"
    # onnxruntime-gpu for Jetson is not on PyPI
    assert t.package_index and "pypi.org" not in t.package_index
    assert any(p.startswith("onnxruntime-gpu==") for p in t.packages)


def test_jetson_thor_stack():
    t = get_target("jetson-thor")
    assert (t.python, t.stack.cuda, t.arch) == ("3.12", "13.0", "arm64")
    assert t.package_index


def test_jetson_xavier_has_no_image():
    t = get_target("jetson-xavier")
    assert (t.stack.cuda, t.stack.tensorrt) == ("11.4", "8.5")
    assert t.docker is None


def test_gpu_server_stack():
    t = get_target("gpu-server")
    assert t.stack.cuda == "13.0" and t.arch == "amd64"
    assert t.package_index is None  # onnxruntime-gpu from PyPI
    assert any(p.startswith("onnxruntime-gpu==") for p in t.packages)


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_targets(name):
    t = get_target(name)
    q = t.quantization
    assert t.runtime == "tensorrt"
    assert t.providers[0] == "TensorrtExecutionProvider"
    assert t.export.fusions == "none"
    assert (q.activation_type, q.weight_type, q.activation_symmetric, q.weight_symmetric) == ("int8", "int8", True, True)
    assert t.reduce_range() is False
    if t.docker is not None:  # images build their engine at first start
        assert t.engine.policy == "build-on-device" and t.engine.cache_dir
    else:  # jetson-xavier: TensorRT 8.5, older than edgeopt builds with
        assert t.engine.policy == "none" and t.stack.tensorrt == "8.5"
    assert t.profiles is not None
    for axis in (t.profiles.batch, t.profiles.sequence):
        assert 1 <= axis[0] <= axis[1] <= axis[2]


@pytest.mark.parametrize("name", CPU)
def test_cpu_targets(name):
    t = get_target(name)
    assert t.runtime == "onnxruntime" and t.engine.policy == "none" and t.profiles is None
    assert t.export.fusions == "onnxruntime"
    assert any(p.startswith("onnxruntime==") for p in t.packages)


def test_cpu_int8_formats():
    x86, rpi5 = get_target("x86"), get_target("rpi5")
    assert (x86.arch, x86.quantization.activation_type) == ("amd64", "uint8")
    assert (rpi5.arch, rpi5.quantization.activation_type) == ("arm64", "int8")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_images_run_a_python_edgeopt_supports(name):
    t = get_target(name)
    if t.docker is None:
        return
    assert tuple(map(int, t.python.split("."))) >= (3, 10)
    assert t.docker.platform == t.platform
    if t.docker.template == "cpu":  # the slim Python image of the profile's Python
        assert t.docker.base_image == f"python:{t.python}-slim"


# ---------------------------------------------------------------------------------------------
# wheel platforms
# ---------------------------------------------------------------------------------------------

def test_wheel_platforms_x86():
    tags = get_target("x86").wheel_platforms()
    assert tags[0] == "manylinux_2_28_x86_64"
    assert tags[-1] == "manylinux2014_x86_64"


def test_wheel_platforms_rpi5():
    tags = get_target("rpi5").wheel_platforms()
    assert tags[0] == "manylinux_2_36_aarch64"
    assert tags[-1] == "manylinux2014_aarch64"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_wheel_platforms_are_newest_first(name):
    t = get_target(name)
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[t.arch]
    tags = t.wheel_platforms()
    assert tags[-1] == f"manylinux2014_{machine}"
    assert tags[0] == f"manylinux_2_{t.glibc.split('.')[1]}_{machine}"
    minors = [int(tag.split("_")[2]) for tag in tags[:-1]]
    assert minors == sorted(minors, reverse=True) and minors[-1] == 17
    assert all(tag.endswith(machine) for tag in tags)


# ---------------------------------------------------------------------------------------------
# unsupported_ops: what a target's runtime cannot run
# ---------------------------------------------------------------------------------------------

def _graph(path: Path, nodes, opset: int = 17, domains=("com.microsoft",)) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [x], [y])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def _node(op, domain="", name=None, inputs=("x",), outputs=("y",)):
    from onnx import helper

    return helper.make_node(op, list(inputs), list(outputs), name=name or f"{op.lower()}_0", domain=domain)


@pytest.fixture
def contrib_graph(tmp_path):
    """A com.microsoft fused op, an integer MatMul and a plain MatMul (not runnable, only inspected)."""
    return _graph(tmp_path / "contrib.onnx", [
        _node("FastGelu", "com.microsoft", name="gelu_1", outputs=("a",)),
        _node("MatMulInteger", name="mmi_1", inputs=("a", "a"), outputs=("b",)),
        _node("MatMul", name="mm_1", inputs=("b", "b"), outputs=("y",)),
    ])


def test_tensorrt_rejects_contrib_and_integer_ops(contrib_graph):
    problems = unsupported_ops(get_target("gpu-server"), contrib_graph)
    assert len(problems) == 2, problems
    contrib = next(p for p in problems if "FastGelu" in p)
    assert "com.microsoft.FastGelu" in contrib and "gelu_1" in contrib
    assert "--target gpu-server" in contrib and "edgeopt export" in contrib  # the fix
    integer = next(p for p in problems if "MatMulInteger" in p)
    assert "mmi_1" in integer and "edgeopt quantize" in integer and "--ptq static" in integer
    assert not any("'mm_1'" in p for p in problems)  # a plain MatMul is fine


@pytest.mark.parametrize("name", CPU)
def test_onnxruntime_runs_contrib_and_integer_ops(name, contrib_graph):
    assert unsupported_ops(get_target(name), contrib_graph) == []


@pytest.mark.parametrize("op", ["DynamicQuantizeLinear", "QLinearMatMul", "ConvInteger"])
def test_tensorrt_rejects_integer_quantization(tmp_path, op):
    path = _graph(tmp_path / "q.onnx", [_node(op)], domains=())
    problems = unsupported_ops(get_target("jetson-orin"), path)
    assert len(problems) == 1 and op in problems[0] and "--target jetson-orin" in problems[0]
    assert unsupported_ops(get_target("x86"), path) == []


def test_standard_ops_run_everywhere(tmp_path):
    path = _graph(tmp_path / "std.onnx", [
        _node("MatMul", inputs=("x", "x"), outputs=("a",)),
        _node("QuantizeLinear", inputs=("a", "s"), outputs=("q",)),  # Q/DQ: what TensorRT reads as int8
        _node("DequantizeLinear", inputs=("q", "s"), outputs=("y",)),
    ], domains=())
    for name in PROFILES:
        assert unsupported_ops(get_target(name), path) == [], name


def test_custom_domain_op_is_rejected_everywhere(tmp_path):
    path = _graph(tmp_path / "custom.onnx", [_node("Frobnicate", "my.domain", name="frob_1")], domains=("my.domain",))
    for name in PROFILES:
        problems = unsupported_ops(get_target(name), path)
        assert len(problems) == 1 and "my.domain.Frobnicate" in problems[0] and "frob_1" in problems[0], (name, problems)
    assert "custom op" in unsupported_ops(get_target("x86"), path)[0]


def test_repeated_op_is_reported_once(tmp_path):
    path = _graph(tmp_path / "rep.onnx", [
        _node("FastGelu", "com.microsoft", name="g1", outputs=("a",)),
        _node("FastGelu", "com.microsoft", name="g2", inputs=("a",), outputs=("y",)),
    ])
    assert len(unsupported_ops(get_target("gpu-server"), path)) == 1


def test_local_functions_are_looked_into(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    fn = helper.make_function("local", "Block", ["i"], ["o"], [_node("FastGelu", "com.microsoft", "fg", ("i",), ("o",))],
                              [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([_node("Block", "local", "blk")], "g", [x], [y])
    model = helper.make_model(graph, functions=[fn], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "fn.onnx"
    onnx.save(model, str(path))
    problems = unsupported_ops(get_target("gpu-server"), path)
    assert len(problems) == 1 and "FastGelu" in problems[0], problems  # the function call itself is not an op
    assert unsupported_ops(get_target("x86"), path) == []


def test_xavier_parses_opset_17_at_most(tmp_path):
    new = _graph(tmp_path / "o18.onnx", [_node("Relu")], opset=18, domains=())
    old = _graph(tmp_path / "o17.onnx", [_node("Relu")], opset=17, domains=())
    problems = unsupported_ops(get_target("jetson-xavier"), new)
    assert len(problems) == 1 and "opset 18" in problems[0] and "--opset 17" in problems[0]
    assert unsupported_ops(get_target("jetson-xavier"), old) == []
    assert unsupported_ops(get_target("jetson-orin"), new) == []


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_targets_lists_every_profile():
    proc = cli("targets")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(PROFILES), proc.stdout
    assert sorted(ln.split()[0] for ln in lines) == sorted(PROFILES)
    by_name = {ln.split()[0]: ln for ln in lines}
    assert "alias: rpi" in by_name["rpi5"] and "alias: jetson" in by_name["jetson-orin"]
    assert "tensorrt" in by_name["gpu-server"] and "onnxruntime" in by_name["x86"]


def test_cli_targets_json():
    proc = cli("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [t["name"] for t in data["targets"]] == target_names()
    for t in data["targets"]:
        assert TargetSpec.model_validate(t) == get_target(t["name"])


def test_cli_targets_show_alias():
    proc = cli("targets", "show", "rpi")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("rpi5:"), proc.stdout
    body = yaml.safe_load("\n".join(proc.stdout.splitlines()[1:]))
    assert body["arch"] == "arm64" and body["threads"] == 4 and body["aliases"] == ["rpi"]


def test_cli_targets_show_json():
    proc = cli("targets", "show", "rpi5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == get_target("rpi5").model_dump(mode="json")


def test_cli_targets_show_unknown():
    proc = cli("targets", "show", "mars")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "mars" in lines[0] and "rpi5" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout and not proc.stdout.strip()
