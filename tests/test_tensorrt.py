"""TensorRT: profiles, engine keys, machine facts, build plans, layer precisions, the ONNX-side graph
checks, ONNX Runtime TensorRT EP options, the `edgeopt engine` command and engine artifacts.

Nothing of TensorRT is mocked. The pure logic runs on literal inputs (versions, compute capabilities,
inspector strings); the graph side runs on real ONNX graphs (conftest's tiny BERT exported for
gpu-server and statically quantized) and real ONNX Runtime CPU sessions; the CLI runs in real
subprocesses. Building and running engines needs TensorRT and a CUDA GPU: `test_engine_build_on_gpu`
does that end to end and skips, saying why, where either is missing.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError as PydanticValidationError

from _support import REPO
from edgeopt.artifact import Artifact, TensorSpec, finalize, load_artifact
from edgeopt.errors import ConfigError, EdgeoptError, InputError, MissingDependencyError, StageError
from edgeopt.stages.engine import EngineConfig, check_tolerances, judge, profile_for
from edgeopt.tensorrt import graph as g
from edgeopt.tensorrt.build import BuildResult, build_plan, expected_precision
from edgeopt.tensorrt.key import EngineKey, EngineMismatch, Machine, check_key, differences, version_tuple
from edgeopt.tensorrt.layers import layer_counts, layer_precision, tensor_precision
from edgeopt.tensorrt.machine import NoGPU, check_version, is_jetson, parse_nvidia_smi, road
from edgeopt.tensorrt.ort_ep import ep_options
from edgeopt.tensorrt.profiles import (
    DEFAULT_AXES,
    check_within,
    derive_profile,
    format_profile,
    ort_profile_options,
    parse_shapes,
)
from test_cli import assert_clean_failure, cli

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed here: the missing-TensorRT path cannot be seen")

TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
GPU_SERVER_AXES = {"batch": [1, 8, 32], "sequence": [1, 128, 512]}
H100 = "NVIDIA H100 80GB HBM3"

# Flag names verified to exist in TensorRT's Python bindings (no /tmp/trt-facts.md was available, so
# these are the lists given with the task): a plan must never name a member the bindings lack, or
# build_engine's getattr(trt.BuilderFlag, name) fails on the GPU machine only.
TRT10_BUILDER_FLAGS = {"FP16", "INT8", "VERSION_COMPATIBLE"}
TRT10_NETWORK_FLAGS = {"EXPLICIT_BATCH", "STRONGLY_TYPED"}
TRT11_BUILDER_FLAGS = {"VERSION_COMPATIBLE"}
TRT11_NETWORK_FLAGS = {"STRONGLY_TYPED"}


# ---------------------------------------------------------------------------------------------
# fixtures: a gpu-server export of the tiny BERT and its static int8 quantizations
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tensorrt")


@pytest.fixture(scope="module")
def gpu_export(workdir, tiny_text_classifier) -> Artifact:
    """`edgeopt export MODEL --target gpu-server`: standard ONNX ops, float32, opset 17."""
    from edgeopt.stages.export import ExportConfig, export

    return export(tiny_text_classifier, workdir / "gpu-server", ExportConfig(target="gpu-server"))


def _static(parent: Artifact, out: Path, target: str, calib: Path) -> Artifact:
    """`edgeopt quantize ONNX --ptq static --calib DATA --target TARGET` (Q/DQ graph)."""
    from edgeopt.stages.quantize import QuantizeConfig, quantize

    return quantize(parent, out, QuantizeConfig(ptq="static", target=target, calib=str(calib), calib_samples=16))


@pytest.fixture(scope="module")
def qdq_gpu(workdir, gpu_export, text_jsonl) -> Artifact:
    return _static(gpu_export, workdir / "qdq-gpu-server", "gpu-server", text_jsonl)


@pytest.fixture(scope="module")
def qdq_x86(workdir, gpu_export, text_jsonl) -> Artifact:
    return _static(gpu_export, workdir / "qdq-x86", "x86", text_jsonl)


def _onnx(art: Artifact):
    import onnx

    return onnx.load(str(art.path / art.manifest.model.file))


def _spec(name: str, shape: list) -> TensorSpec:
    return TensorSpec(name=name, dtype="int64", shape=shape)


# ---------------------------------------------------------------------------------------------
# 1. optimization profiles
# ---------------------------------------------------------------------------------------------

def test_parse_shapes_valid():
    assert parse_shapes(["input_ids:1x1:8x128:32x512"]) == {"input_ids": [[1, 1], [8, 128], [32, 512]]}
    two = parse_shapes(["input_ids:1x1:8x128:32x512", "pixel_values:1x3x224x224:4x3x224x224:8x3x224x224"])
    assert list(two) == ["input_ids", "pixel_values"]
    assert two["pixel_values"] == [[1, 3, 224, 224], [4, 3, 224, 224], [8, 3, 224, 224]]
    assert parse_shapes(["x:4:4:4"]) == {"x": [[4], [4], [4]]}  # min == opt == max is a fixed shape
    assert parse_shapes(["onnx::a:1:2:3"]) == {"onnx::a": [[1], [2], [3]]}  # the name may hold colons
    assert parse_shapes([]) == {}


@pytest.mark.parametrize("spec, fragment", [
    ("input_ids:1x1:8x128", "write NAME:MIN:OPT:MAX, e.g. input_ids:1x1:8x128:32x512"),
    ("input_ids", "write NAME:MIN:OPT:MAX"),
    (":1x1:8x128:32x512", "write NAME:MIN:OPT:MAX"),
    ("input_ids:1x1:8y128:32x512", "'8y128' is not a shape; write dimensions joined by x, e.g. 8x128"),
    ("input_ids:1x1::32x512", "'' is not a shape"),
    ("input_ids:1x1:8x128:32x", "'32x' is not a shape"),
    ("input_ids:-1x1:8x128:32x512", "'-1x1' is not a shape"),
    ("input_ids:0x1:8x128:32x512", "dimensions must be at least 1"),
    ("input_ids:1x0:8x128:32x512", "dimensions must be at least 1"),
    ("input_ids:16x1:8x128:32x512", "every dimension needs min <= opt <= max"),
    ("input_ids:1x1:8x1024:32x512", "every dimension needs min <= opt <= max"),
    ("input_ids:1x1:8x128:32", "min, opt and max must have the same rank"),
    ("input_ids:1:8x128:32x512", "min, opt and max must have the same rank"),
])
def test_parse_shapes_invalid(spec, fragment):
    with pytest.raises(ConfigError) as ei:
        parse_shapes([spec])
    assert fragment in str(ei.value)
    assert str(ei.value).startswith(f"--shapes '{spec}'")
    assert ei.value.exit_code == 2


def test_parse_shapes_duplicate_name():
    with pytest.raises(ConfigError, match="--shapes gives input 'input_ids' twice"):
        parse_shapes(["input_ids:1x1:8x128:32x512", "input_ids:1x1:4x64:8x128"])


def test_derive_profile_on_a_real_export(gpu_export):
    inputs = load_artifact(gpu_export.path).manifest.io.inputs
    assert [t.name for t in inputs] == TEXT_INPUTS
    assert all(t.shape == ["batch", "sequence"] for t in inputs)
    profile = derive_profile(inputs, GPU_SERVER_AXES)
    assert profile == {n: [[1, 1], [8, 128], [32, 512]] for n in TEXT_INPUTS}
    assert list(profile) == TEXT_INPUTS  # the model's input order
    assert derive_profile(inputs) == derive_profile(inputs, DEFAULT_AXES) == profile
    # one axis from the target, the other from the defaults
    assert derive_profile(inputs, {"batch": [2, 4, 16]})["input_ids"] == [[2, 1], [4, 128], [16, 512]]


def test_derive_profile_overrides_every_sharing_input(gpu_export):
    inputs = gpu_export.manifest.io.inputs
    shapes = [f"{n}:1x16:4x64:8x64" for n in TEXT_INPUTS]
    assert derive_profile(inputs, GPU_SERVER_AXES, parse_shapes(shapes)) == {n: [[1, 16], [4, 64], [8, 64]] for n in TEXT_INPUTS}


def test_profile_for_caps_sequence_to_the_tokenizer(gpu_export):
    """The tokenizer never makes inputs longer than max_length (128 here): no kernel is planned for 512."""
    pre = gpu_export.manifest.io.preprocessing
    assert pre.kind == "text" and pre.max_length == 128
    assert profile_for(gpu_export, "gpu-server", []) == {n: [[1, 1], [8, 128], [32, 128]] for n in TEXT_INPUTS}
    # jetson-orin: batch [1, 4, 16], sequence [1, 128, 256] capped to 128
    assert profile_for(gpu_export, "jetson-orin", [])["attention_mask"] == [[1, 1], [4, 128], [16, 128]]
    short = gpu_export.manifest.model_copy(deep=True)
    short.io.preprocessing.max_length = 64
    assert profile_for(Artifact(gpu_export.path, short), "gpu-server", [])["input_ids"] == [[1, 1], [8, 64], [32, 64]]
    # --shapes still wins for every input named
    override = [f"{n}:1x8:2x32:4x96" for n in TEXT_INPUTS]
    assert profile_for(gpu_export, "gpu-server", override)["token_type_ids"] == [[1, 8], [2, 32], [4, 96]]


def test_unknown_axis_names_shapes(gpu_export):
    inputs = [t.model_copy(update={"shape": ["batch", "tokens"]}) if t.name == "input_ids" else t
              for t in gpu_export.manifest.io.inputs]
    with pytest.raises(ConfigError) as ei:
        derive_profile(inputs, GPU_SERVER_AXES)
    msg = str(ei.value)
    assert "input 'input_ids' has dynamic axis 'tokens' with no default range" in msg
    assert "--shapes input_ids:MIN:OPT:MAX (e.g. input_ids:1x1:8x8:32x32)" in msg
    # ...and --shapes for it is the way out
    profile = derive_profile(inputs, GPU_SERVER_AXES, parse_shapes(["input_ids:1x1:8x128:32x512"]))
    assert profile["input_ids"] == [[1, 1], [8, 128], [32, 512]]


def test_shapes_for_an_input_the_model_lacks(gpu_export):
    with pytest.raises(ConfigError) as ei:
        derive_profile(gpu_export.manifest.io.inputs, GPU_SERVER_AXES, parse_shapes(["pixel_values:1x1:1x1:1x1"]))
    assert str(ei.value) == ("--shapes names input(s) pixel_values the model does not have; its inputs are "
                             "input_ids, attention_mask, token_type_ids")


def test_override_of_a_fixed_dimension(digits_onnx):
    inputs = digits_onnx.manifest.io.inputs
    with pytest.raises(ConfigError) as ei:
        derive_profile(inputs, GPU_SERVER_AXES, parse_shapes(["pixel_values:1x3x8x8:8x3x8x8:32x3x8x8"]))
    assert str(ei.value) == "--shapes pixel_values: dimension 1 is fixed at 1 in the model; give 1 for min, opt and max"
    with pytest.raises(ConfigError, match=r"--shapes pixel_values: rank 2 differs from the input's rank 4 \(shape \[batch, 1, 8, 8\]\)"):
        derive_profile(inputs, GPU_SERVER_AXES, parse_shapes(["pixel_values:1x1:8x1:32x1"]))


def test_inconsistent_shared_axis(gpu_export):
    with pytest.raises(ConfigError) as ei:
        derive_profile(gpu_export.manifest.io.inputs, GPU_SERVER_AXES, parse_shapes(["input_ids:1x1:8x64:32x64"]))
    msg = str(ei.value)
    assert "axis 'sequence' gets range [1, 128, 512] on input 'attention_mask' but [1, 64, 64] on 'input_ids'" in msg
    assert "inputs sharing an axis need the same min/opt/max" in msg
    with pytest.raises(ConfigError, match="axis 'batch'"):
        derive_profile([_spec("a", ["batch", 4]), _spec("b", ["batch", 4])], None, parse_shapes(["b:2x4:4x4:8x4"]))


def test_image_model_profile(digits_onnx):
    (spec,) = digits_onnx.manifest.io.inputs
    assert spec.name == "pixel_values" and spec.shape == ["batch", 1, 8, 8]
    expected = {"pixel_values": [[1, 1, 8, 8], [8, 1, 8, 8], [32, 1, 8, 8]]}
    assert derive_profile([spec], GPU_SERVER_AXES) == expected
    assert profile_for(digits_onnx, "gpu-server", []) == expected  # no tokenizer: nothing capped
    assert profile_for(digits_onnx, "jetson-orin", []) == {"pixel_values": [[1, 1, 8, 8], [4, 1, 8, 8], [16, 1, 8, 8]]}
    assert format_profile(expected) == "pixel_values:1x1x8x8..8x1x8x8..32x1x8x8"


def test_check_within():
    profile = {"input_ids": [[1, 1], [8, 128], [32, 512]], "attention_mask": [[1, 1], [8, 128], [32, 512]]}
    for shape in ([1, 1], [8, 128], [32, 512], [3, 77]):
        check_within(profile, {"input_ids": shape, "attention_mask": shape})
    check_within(profile, {"not_in_the_profile": [1000, 1000]})  # shape tensors etc. are not TensorRT's to refuse

    with pytest.raises(InputError) as ei:
        check_within(profile, {"input_ids": [64, 128]})
    msg = str(ei.value)
    assert "input 'input_ids' has shape [64, 128]: dimension 0 = 64 is outside the engine's profile [1, 32]" in msg
    assert "--shapes input_ids:1x1:8x128:64x512" in msg
    assert ei.value.exit_code == 2

    with pytest.raises(InputError) as ei:
        check_within(profile, {"attention_mask": [8, 1024]})
    assert "input 'attention_mask' has shape [8, 1024]: dimension 1 = 1024 is outside the engine's profile [1, 512]" in str(ei.value)
    assert "--shapes attention_mask:1x1:8x128:32x1024" in str(ei.value)

    with pytest.raises(InputError, match="input 'input_ids' has rank 3 but the engine takes rank 2"):
        check_within(profile, {"input_ids": [1, 8, 8]})


def test_ort_profile_options_format():
    profile = {"input_ids": [[1, 1], [8, 128], [32, 512]], "attention_mask": [[1, 1], [8, 128], [32, 512]]}
    assert ort_profile_options(profile) == {
        "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
        "trt_profile_opt_shapes": "input_ids:8x128,attention_mask:8x128",
        "trt_profile_max_shapes": "input_ids:32x512,attention_mask:32x512",
    }
    assert format_profile(profile) == "input_ids:1x1..8x128..32x512, attention_mask:1x1..8x128..32x512"


# ---------------------------------------------------------------------------------------------
# 2. engine keys
# ---------------------------------------------------------------------------------------------

PROFILE = {"input_ids": [[1, 1], [8, 128], [32, 128]]}
REBUILD = "edgeopt engine ENGINE -o NEW_FOLDER"


def _key(**kw) -> EngineKey:
    base = dict(onnx_sha256="ab" * 32, tensorrt="10.13.0.35", gpu=H100, compute_capability="9.0", cuda="13.0",
                profiles=PROFILE, precision="fp16")
    return EngineKey(**{**base, **kw})


def _here(**kw) -> Machine:
    base = dict(tensorrt="10.13.0.35", gpu=H100, compute_capability="9.0", cuda="13.0")
    return Machine(**{**base, **kw})


def _refused(key: EngineKey, here: Machine) -> str:
    with pytest.raises(EngineMismatch) as ei:
        check_key(key, here, engine="ENGINE", rebuild=REBUILD)
    msg = str(ei.value)
    assert msg.startswith("ENGINE cannot run on this machine: ")
    assert f"rebuild it here with `{REBUILD}`" in msg
    return msg


def test_identical_machine_runs_the_engine():
    assert differences(_key(), _here()) == []
    assert check_key(_key(), _here(), engine="ENGINE", rebuild=REBUILD) == []
    # the build number (4th part) is not a different release
    assert check_key(_key(), _here(tensorrt="10.13.0.36"), engine="ENGINE", rebuild=REBUILD) == []
    # a CUDA minor release is no obstacle; an unknown CUDA on either side is not compared
    assert differences(_key(), _here(cuda="13.1")) == []
    assert differences(_key(cuda=None), _here(cuda="12.6")) == differences(_key(), _here(cuda=None)) == []


def test_tensorrt_patch_differs():
    msg = _refused(_key(), _here(tensorrt="10.13.3.9"))
    assert "TensorRT 10.13.3.9 here, 10.13.0.35 at build" in msg
    assert "(or build it --version-compatible to move between TensorRT releases of one major)" in msg
    assert "TensorRT 10.12.0.36 here, 10.13.0.35 at build" in _refused(_key(), _here(tensorrt="10.12.0.36"))


def test_version_compatible_engine():
    vc = _key(version_compatible=True)
    for later in ("10.13.0.35", "10.13.3.9", "10.14.1.48", "10.16.1.11"):
        assert check_key(vc, _here(tensorrt=later), engine="ENGINE", rebuild=REBUILD) == [], later
    for other in ("10.12.0.36", "10.9.0.34", "11.0.0.1", "8.6.1.6"):
        msg = _refused(vc, _here(tensorrt=other))
        assert (f"TensorRT {other} here, and a version-compatible engine from 10.13.0.35 runs only on TensorRT 10.x "
                "from 10.13.0 on") in msg
        assert "--version-compatible to move" not in msg  # it already is


def test_compute_capability_differs():
    msg = _refused(_key(), _here(gpu="NVIDIA A10", compute_capability="8.6"))
    assert f"GPU NVIDIA A10 (sm_86) here, {H100} (sm_90) at build" in msg
    msg = _refused(_key(gpu="NVIDIA A10", compute_capability="8.6"), _here(gpu="NVIDIA L4", compute_capability="8.9"))
    assert "sm_89" in msg and "sm_86" in msg


def test_hardware_compatible_engine():
    amp = _key(hardware_compat="ampere+", gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    for gpu, cc in (("NVIDIA A10", "8.6"), (H100, "9.0"), ("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA L40S", "8.9")):
        assert check_key(amp, _here(gpu=gpu, compute_capability=cc), engine="ENGINE", rebuild=REBUILD) == [], cc
    msg = _refused(amp, _here(gpu="Tesla T4", compute_capability="7.5"))
    assert "GPU Tesla T4 (sm_75) here; a hardware-compatible (ampere+) engine runs only on Ampere or newer discrete GPUs" in msg
    msg = _refused(amp, _here(gpu="Orin", compute_capability="8.7", jetson=True))
    assert "GPU Orin (sm_87) here; a hardware-compatible (ampere+) engine runs only on Ampere or newer discrete GPUs" in msg
    # hardware compatibility is not version compatibility
    assert "TensorRT 10.14.1.48 here, 10.13.0.35 at build" in _refused(amp, _here(tensorrt="10.14.1.48"))


def test_cuda_major_differs():
    msg = _refused(_key(cuda="12.9"), _here(cuda="13.0"))
    assert "CUDA 13.0 here, 12.9 at build" in msg


def test_every_difference_is_named_at_once():
    msg = _refused(_key(), _here(tensorrt="10.14.1.48", gpu="NVIDIA A10", compute_capability="8.6", cuda="12.9"))
    assert "TensorRT 10.14.1.48 here" in msg and "(sm_86) here" in msg and "CUDA 12.9 here" in msg
    assert len(differences(_key(), _here(tensorrt="10.14.1.48", gpu="NVIDIA A10", compute_capability="8.6", cuda="12.9"))) == 3


def test_same_architecture_other_gpu_warns():
    warnings = check_key(_key(), _here(gpu="NVIDIA H200"), engine="ENGINE", rebuild=REBUILD)
    assert len(warnings) == 1
    w = warnings[0]
    assert f"ENGINE was built on {H100}, this is NVIDIA H200 (same architecture sm_90)" in w
    assert "rebuild here for best speed" in w
    # a hardware-compatible engine is meant to move: no warning
    amp = _key(hardware_compat="ampere+")
    assert check_key(amp, _here(gpu="NVIDIA H200"), engine="ENGINE", rebuild=REBUILD) == []


def test_key_digest():
    k = _key()
    assert len(k.digest()) == 16 and all(c in "0123456789abcdef" for c in k.digest())
    assert k.digest() == _key().digest() == EngineKey.model_validate(json.loads(k.model_dump_json())).digest()
    assert k.digest() != _key(precision="fp32").digest()
    assert k.digest() != _key(profiles={"input_ids": [[1, 1], [8, 128], [32, 256]]}).digest()
    assert k.digest() != _key(tensorrt="10.13.3.9").digest()
    assert k.digest() != _key(version_compatible=True).digest()


def test_engine_mismatch_is_a_failure_not_a_usage_error():
    assert EngineMismatch.exit_code == 1
    assert issubclass(EngineMismatch, EdgeoptError)
    with pytest.raises(EngineMismatch) as ei:
        check_key(_key(), _here(compute_capability="8.6"), engine="E", rebuild=REBUILD)
    assert ei.value.exit_code == 1


def test_key_rejects_unknown_fields_and_values():
    with pytest.raises(PydanticValidationError):
        EngineKey(**{**_key().model_dump(), "hardware_compat": "hopper+"})
    with pytest.raises(PydanticValidationError):
        Machine(tensorrt="10.13.0.35", gpu=H100, compute_capability="9.0", driver="580")


def test_version_tuple():
    assert version_tuple("10.13.0.35") == (10, 13, 0, 35)
    assert version_tuple("8.6.1") == (8, 6, 1)
    assert version_tuple("9.0") == (9, 0)


# ---------------------------------------------------------------------------------------------
# 3. machine facts
# ---------------------------------------------------------------------------------------------

def test_road():
    assert road("10.16.1.11") == "flags"
    assert road("10.0.1.6") == "flags"
    assert road("8.6.1") == "flags"
    assert road("8.6.1.6") == "flags"
    assert road("11.4.0.106") == "typed"
    assert road("11.0.0") == "typed"
    assert check_version("8.6.0") == (8, 6, 0)


@pytest.mark.parametrize("version", ["8.5.3", "8.5.2.2", "8.4.1", "7.2.3"])
def test_too_old_tensorrt(version):
    with pytest.raises(ConfigError) as ei:
        road(version)
    assert ei.value.exit_code == 2
    assert f"TensorRT {version} is older than 8.6, the oldest edgeopt builds with" in str(ei.value)
    assert "JetPack 6" in str(ei.value)


def test_parse_nvidia_smi():
    assert parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0\n") == (H100, "9.0")
    assert parse_nvidia_smi("\n\nNVIDIA A10, 8.6\nTesla T4, 7.5\n") == ("NVIDIA A10", "8.6")  # GPU 0
    assert parse_nvidia_smi("NVIDIA GeForce RTX 4090, 8.9") == ("NVIDIA GeForce RTX 4090", "8.9")
    for text, shown in (("", "empty output"), ("\n \n", "empty output"), ("No devices were found\n", "No devices were found")):
        with pytest.raises(NoGPU) as ei:
            parse_nvidia_smi(text)
        assert str(ei.value) == f"nvidia-smi reports no GPU ({shown})"
        assert ei.value.exit_code == 1


def test_is_jetson(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_HOST_ROOT", str(tmp_path))
    assert is_jetson() is False
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert is_jetson() is True


@needs_no_tensorrt
def test_import_tensorrt_names_the_extra():
    from edgeopt.tensorrt.machine import import_tensorrt

    with pytest.raises(MissingDependencyError) as ei:
        import_tensorrt()
    msg = str(ei.value)
    assert ei.value.exit_code == 2
    assert msg.startswith("tensorrt is not installed (needed for building and running TensorRT engines")
    assert "pip install 'edgeopt[tensorrt]'" in msg
    assert "nvcr.io/nvidia/tensorrt" in msg
    with pytest.raises(MissingDependencyError, match=r"needed for running the engine X"):
        import_tensorrt("running the engine X")


# ---------------------------------------------------------------------------------------------
# 4. build plans
# ---------------------------------------------------------------------------------------------

def test_plan_trt10_fp16_on_a_float_graph():
    plan = build_plan("10.13.0.35", "fp16", "fp32")
    assert plan.road == "flags"
    assert plan.builder_flags == ["FP16"]
    assert plan.network_flags == []  # explicit batch is the only mode in 10; STRONGLY_TYPED would ignore FP16
    assert plan.fp16_cast is False and plan.hardware_compat is None and plan.notes == []


def test_plan_trt86_explicit_batch():
    plan = build_plan("8.6.1.6", "fp16", "fp32")
    assert plan.road == "flags"
    assert plan.network_flags == ["EXPLICIT_BATCH"]
    assert plan.builder_flags == ["FP16"]
    assert build_plan("8.6.1", "fp32", "fp32").network_flags == ["EXPLICIT_BATCH"]
    assert build_plan("8.6.1", "fp32", "fp32").builder_flags == []


def test_plan_trt11_fp16_is_cast_into_the_graph():
    """TensorRT 11 has no precision flags: asking for fp16 by flag builds fp32 without a word."""
    plan = build_plan("11.4.0.106", "fp16", "fp32")
    assert plan.road == "typed"
    assert plan.network_flags == ["STRONGLY_TYPED"]
    assert plan.fp16_cast is True
    assert not {"FP16", "INT8", "BF16", "FP8", "TF32"} & set(plan.builder_flags)
    assert plan.builder_flags == []
    # a graph already in float16 is built as it is
    assert build_plan("11.4.0.106", "fp16", "fp16").fp16_cast is False
    # fp32 stays fp32
    assert build_plan("11.4.0.106", "fp32", "fp32").fp16_cast is False


def test_plan_trt11_int8_from_qdq():
    plan = build_plan("11.4.0.106", "int8", "int8")
    assert plan.network_flags == ["STRONGLY_TYPED"]
    assert plan.builder_flags == [] and plan.fp16_cast is False and plan.notes == []


def test_plan_trt10_best_with_qdq():
    plan = build_plan("10.13.0.35", "best", "int8")
    assert plan.builder_flags == ["FP16", "INT8"]
    assert plan.notes == [] and plan.fp16_cast is False
    assert build_plan("10.13.0.35", "int8", "int8").builder_flags == ["INT8"]


def test_plan_best_on_a_float_graph_says_it_is_fp16():
    note = "best without Q/DQ nodes is fp16: int8 comes from a quantized graph"
    plan = build_plan("10.13.0.35", "best", "fp32")
    assert plan.builder_flags == ["FP16"] and plan.notes == [note]
    typed = build_plan("11.4.0.106", "best", "fp32")
    assert typed.fp16_cast is True and typed.notes == [note]


def test_plan_version_and_hardware_compat():
    plan = build_plan("10.13.0.35", "fp16", "fp32", version_compatible=True)
    assert plan.builder_flags == ["FP16", "VERSION_COMPATIBLE"]
    assert build_plan("11.4.0.106", "fp16", "fp32", version_compatible=True).builder_flags == ["VERSION_COMPATIBLE"]
    assert build_plan("10.13.0.35", "fp16", "fp32", hardware_compat="ampere+").hardware_compat == "AMPERE_PLUS"
    assert build_plan("10.13.0.35", "fp16", "fp32", hardware_compat="none").hardware_compat is None


def test_plan_ampere_plus_on_jetson():
    with pytest.raises(ConfigError) as ei:
        build_plan("10.3.0.30", "fp16", "fp32", hardware_compat="ampere+", jetson=True)
    assert "--hardware-compat ampere+ is not available on Jetson" in str(ei.value)
    assert ei.value.exit_code == 2
    assert build_plan("10.3.0.30", "fp16", "fp32", jetson=True).builder_flags == ["FP16"]


def test_plan_refuses_too_old_tensorrt():
    with pytest.raises(ConfigError, match="older than 8.6"):
        build_plan("8.5.2.2", "fp16", "fp32")


@pytest.mark.parametrize("version, builder_names, network_names", [
    ("8.6.1.6", TRT10_BUILDER_FLAGS, TRT10_NETWORK_FLAGS),
    ("10.0.1.6", TRT10_BUILDER_FLAGS, TRT10_NETWORK_FLAGS),
    ("10.13.0.35", TRT10_BUILDER_FLAGS, TRT10_NETWORK_FLAGS),
    ("11.0.0.1", TRT11_BUILDER_FLAGS, TRT11_NETWORK_FLAGS),
    ("11.4.0.106", TRT11_BUILDER_FLAGS, TRT11_NETWORK_FLAGS),
])
def test_plan_names_only_flags_the_bindings_have(version, builder_names, network_names):
    for precision in ("fp32", "fp16", "int8", "best"):
        for graph_precision in ("fp32", "fp16", "int8"):
            for vc in (False, True):
                for hw in ("none", "ampere+"):
                    plan = build_plan(version, precision, graph_precision, version_compatible=vc, hardware_compat=hw)
                    where = (version, precision, graph_precision, vc, hw)
                    assert set(plan.builder_flags) <= builder_names, (where, plan)
                    assert set(plan.network_flags) <= network_names, (where, plan)
                    assert len(plan.builder_flags) == len(set(plan.builder_flags)), (where, plan)
                    assert plan.hardware_compat in (None, "AMPERE_PLUS")


# ---------------------------------------------------------------------------------------------
# 5. layer precisions from the engine inspector
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, precision", [
    ("Row major linear FP32", "fp32"),
    ("Channel major FP32 format where channel % 4 == 0", "fp32"),
    ("Channel major FP16 format where channel % 8 == 0", "fp16"),
    ("Two wide channel vectorized row major FP16 format", "fp16"),
    ("Row major linear FP16 format", "fp16"),
    ("Row major linear Int8", "int8"),
    ("Channel major INT8 format where channel % 32 == 0", "int8"),
    ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
    ("Row major linear Int32", None),
    ("Row major linear Int64", None),
    ("Row major linear Bool", None),
    ("Row major linear UInt8", None),
    ("Half", "fp16"),
    ("BF16", "bf16"),
    ("Row major linear BF16 format", "bf16"),
    ("FP8", "fp8"),
    ("Row major linear Int4", "int4"),
])
def test_tensor_precision(fmt, precision):
    assert tensor_precision(fmt) == precision


def _t(name: str, dims: list[int], fmt: str) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt}


# A TensorRT 10 inspector document at ProfilingVerbosity.DETAILED (LayerInformationFormat.JSON), shaped
# as the inspector writes it for a small BERT: shape layers on Int64, a Myelin region, an int8 GEMM.
INSPECTOR_DOC = {
    "Layers": [
        {"Name": "__mye_shape_of_input_ids", "LayerType": "ShapeHostToDevice",
         "Inputs": [_t("input_ids", [-1, -1], "Row major linear Int64")],
         "Outputs": [_t("(Unnamed Layer* 3) [Shape]_output", [2], "Row major linear Int64")],
         "TacticValue": "0x0000000000000000", "StreamId": 0, "Metadata": ""},
        {"Name": "{ForeignNode[/model/bert/embeddings/word_embeddings/Gather.../model/bert/encoder/layer.0/output/LayerNorm/LayerNormalization]}",
         "LayerType": "Myelin",
         "Inputs": [_t("input_ids", [-1, -1], "Row major linear Int64"), _t("attention_mask", [-1, -1], "Row major linear Int64")],
         "Outputs": [_t("/model/bert/encoder/layer.0/output/LayerNorm/LayerNormalization_output_0", [-1, -1, 32],
                        "Row major linear FP16 format")],
         "TacticName": "", "StreamId": 0, "Metadata": ""},
        {"Name": "/model/bert/encoder/layer.1/intermediate/dense/MatMul", "LayerType": "CaskGemmMatrixMultiply",
         "Inputs": [_t("/model/bert/encoder/layer.1/attention/output/LayerNorm_output_0_QuantizeLinear", [-1, -1, 32],
                       "Channel major INT8 format where channel % 32 == 0")],
         "Outputs": [_t("/model/bert/encoder/layer.1/intermediate/dense/MatMul_output_0", [-1, -1, 64],
                        "Channel major FP16 format where channel % 8 == 0")],
         "ParameterType": "MatrixMultiply", "TacticValue": "0x4ad5c7f3c9e1d2a0", "StreamId": 0, "Metadata": ""},
        {"Name": "Reformatting CopyNode for Output Tensor 0 to logits", "LayerType": "Reformat",
         "Inputs": [_t("logits_fp16", [-1, 3], "Row major linear FP16 format")],
         "Outputs": [_t("logits", [-1, 3], "Row major linear FP32")],
         "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x00000000000003e8", "StreamId": 0, "Metadata": ""},
        {"Name": "/classifier/Gemm", "LayerType": "CaskGemmMatrixMultiply",
         "Inputs": [_t("pooled", [-1, 32], "Row major linear FP32")],
         "Outputs": [_t("logits_fp32", [-1, 3], "Row major linear FP32")],
         "ParameterType": "MatrixMultiply", "TacticValue": "0x1", "StreamId": 0, "Metadata": ""},
    ],
    "Bindings": ["input_ids", "attention_mask", "token_type_ids", "logits"],
}


def test_layer_counts_detailed_document():
    counts = layer_counts(INSPECTOR_DOC)
    # Int64-only shape layer: not counted; int8 GEMM writing fp16: int8; fp16 -> fp32 reformat: fp16
    assert counts == {"int8": 1, "fp16": 2, "fp32": 1}
    assert list(counts) == ["int8", "fp16", "fp32"]  # narrowest first
    assert layer_counts(json.dumps(INSPECTOR_DOC)) == counts  # the inspector's string as it comes
    assert layer_counts(INSPECTOR_DOC["Layers"]) == counts  # a bare list of layers


def test_layer_precision_and_names_only_layers():
    assert layer_precision(INSPECTOR_DOC["Layers"][2]) == "int8"
    assert layer_precision(INSPECTOR_DOC["Layers"][0]) is None
    assert layer_precision({"Name": "x", "Inputs": [{"Name": "a", "Datatype": "Row major linear Half"}]}) == "fp16"
    assert layer_precision({"Name": "x", "Inputs": None, "Outputs": []}) is None
    # ProfilingVerbosity.LAYER_NAMES_ONLY: the inspector lists names only; nothing to count
    names_only = {"Layers": ["/model/bert/embeddings/word_embeddings/Gather", "/classifier/Gemm"], "Bindings": ["input_ids", "logits"]}
    assert layer_precision("/classifier/Gemm") is None
    assert layer_counts(names_only) == {}
    assert layer_counts({"Layers": []}) == {}


def test_build_result_counts_and_key():
    here = _here()
    res = BuildResult(engine=b"x", layers=INSPECTOR_DOC["Layers"], machine=here, road="flags", flags=["FP16"],
                      fp16_cast=False, seconds=1.0)
    assert res.layer_counts == {"int8": 1, "fp16": 2, "fp32": 1}
    key = res.key(onnx_sha256="cd" * 32, precision="best", profile=PROFILE, version_compatible=True, hardware_compat="ampere+")
    assert key == EngineKey(onnx_sha256="cd" * 32, tensorrt=here.tensorrt, gpu=here.gpu, compute_capability="9.0", cuda="13.0",
                            profiles=PROFILE, precision="best", version_compatible=True, hardware_compat="ampere+")


def test_expected_precision_fp16_missing():
    with pytest.raises(StageError) as ei:
        expected_precision("fp16", "fp32", {"fp32": 12}, road="typed")
    msg = str(ei.value)
    assert "the built engine has no fp16 layers (12 fp32)" in msg
    assert "TensorRT 11" in msg and "fp16 casts or Q/DQ nodes" in msg
    with pytest.raises(StageError) as ei:
        expected_precision("fp16", "fp32", {"fp32": 12}, road="flags")
    assert "no fp16 layers" in str(ei.value) and "TensorRT 11" not in str(ei.value)
    expected_precision("fp16", "fp32", {"fp16": 10, "fp32": 2}, road="flags")


def test_expected_precision_fp32_with_lower_layers():
    with pytest.raises(StageError) as ei:
        expected_precision("fp32", "fp32", {"fp16": 3, "fp32": 10}, road="flags")
    assert str(ei.value) == "an fp32 engine was asked for, but 3 layers run fp16"
    with pytest.raises(StageError, match="2 layers run int8"):
        expected_precision("fp32", "fp32", {"int8": 2, "fp32": 10}, road="typed")
    expected_precision("fp32", "fp32", {"fp32": 10}, road="flags")


def test_expected_precision_int8_and_best():
    expected_precision("int8", "int8", {"int8": 5, "fp32": 2}, road="flags")
    expected_precision("int8", "int8", {"int8": 5, "fp16": 7}, road="typed")
    expected_precision("best", "int8", {"int8": 1, "fp16": 4}, road="flags")
    expected_precision("best", "fp32", {"fp16": 4}, road="flags")  # no Q/DQ: best is fp16
    with pytest.raises(StageError, match=r"the built engine has no int8 layers \(5 fp16\)"):
        expected_precision("best", "int8", {"fp16": 5}, road="flags")
    with pytest.raises(StageError, match=r"no int8 layers \(4 fp16, 2 fp32\)"):
        expected_precision("int8", "int8", {"fp16": 4, "fp32": 2}, road="typed")


def test_expected_precision_without_layer_information():
    for precision in ("fp32", "fp16", "int8", "best"):
        with pytest.raises(StageError, match="layer information is empty, so its precision cannot be checked"):
            expected_precision(precision, "fp32", {}, road="flags")


# ---------------------------------------------------------------------------------------------
# 6. the ONNX graph TensorRT gets (real exports and quantizations)
# ---------------------------------------------------------------------------------------------

def test_gpu_server_qdq_graph_is_what_tensorrt_takes(qdq_gpu):
    model = _onnx(qdq_gpu)
    assert qdq_gpu.manifest.model.quantization["activation_symmetric"] is True
    assert g.has_qdq(model) is True
    assert g.precision_of(model) == "int8"
    assert g.qdq_problems(model) == []
    g.check_qdq(model, qdq_gpu.path / "model.onnx")  # no error
    g.check_standard_ops(qdq_gpu.path / "model.onnx")


def test_x86_static_int8_is_asymmetric(qdq_x86):
    model = _onnx(qdq_x86)
    problems = g.qdq_problems(model)
    assert any(p.startswith("uint8 (asymmetric) quantization ('") for p in problems), problems
    assert all(" more)" in p for p in problems if p.startswith("uint8"))  # many nodes: three named, the rest counted
    with pytest.raises(InputError) as ei:
        g.check_qdq(model, Path("m.onnx"))
    msg = str(ei.value)
    assert msg.startswith("m.onnx: TensorRT takes symmetric int8 Q/DQ only (zero point 0, float biases)")
    assert "uint8 (asymmetric) quantization" in msg
    assert "`edgeopt quantize MODEL --ptq static --calib DATA --target gpu-server`" in msg


def _single_use_int8_zero_point(model):
    """(initializer, the one Q/DQ node using it) for an int8 zero point read by exactly one node."""
    from onnx import numpy_helper

    users: dict[str, list] = {}
    for n in model.graph.node:
        if n.op_type in g.QDQ_OPS and len(n.input) > 2:
            users.setdefault(n.input[2], []).append(n)
    for init in model.graph.initializer:
        if len(users.get(init.name, [])) == 1 and numpy_helper.to_array(init).dtype == np.int8:
            return init, users[init.name][0]
    raise AssertionError("no int8 zero point used by a single node")


def test_non_zero_zero_point_is_named(qdq_gpu, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = _onnx(qdq_gpu)
    init, node = _single_use_int8_zero_point(model)
    init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), 3), init.name))
    path = tmp_path / "nonzero.onnx"
    onnx.save(model, str(path))
    reloaded = g.load(path)
    assert g.qdq_problems(reloaded) == [f"non-zero zero points ('{node.name}')"]
    with pytest.raises(InputError, match=rf"non-zero zero points \('{node.name}'\)"):
        g.check_qdq(reloaded, path)


def test_non_positive_scale_is_named(qdq_gpu):
    from onnx import numpy_helper

    model = _onnx(qdq_gpu)
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    scale = next(t for t in model.graph.initializer if t.name == dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(scale)), scale.name))
    problems = g.qdq_problems(model)
    assert len(problems) == 1 and problems[0].startswith("scales that are not positive (")
    assert f"'{dq.name}'" in problems[0]


def test_float_graph_precision_and_checks(gpu_export, qdq_gpu):
    model = _onnx(gpu_export)
    assert g.has_qdq(model) is False
    assert g.precision_of(model) == "fp32"
    assert g.float_types(model) == {"float32"}
    assert g.qdq_problems(model) == []
    g.check_standard_ops(gpu_export.path / "model.onnx")
    g.require_standard("fp16", model, Path("m.onnx"))  # a float graph builds in any float precision
    with pytest.raises(ConfigError, match="holds Q/DQ nodes, which make those layers int8: ask --precision int8"):
        g.require_standard("fp16", _onnx(qdq_gpu), Path("m.onnx"))


def test_fused_export_is_refused_before_the_parser(cls_onnx):
    with pytest.raises(InputError) as ei:
        g.check_standard_ops(cls_onnx.path / "model.onnx")
    msg = str(ei.value)
    assert "TensorRT cannot build this graph" in msg and "com.microsoft" in msg
    assert "`edgeopt export MODEL --target gpu-server`" in msg


def test_unreadable_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf \xff\xff\xff")
    with pytest.raises(InputError, match="not a readable ONNX model .*; re-export it"):
        g.load(bad)


def test_cast_fp16_types(gpu_export):
    """The graph a TensorRT 11 fp16 build parses: float16 weights, float32 at the boundary."""
    import onnx

    fp32 = _onnx(gpu_export)
    fp16 = g.cast_fp16(fp32)
    assert g.precision_of(fp16) == "fp16" and g.precision_of(fp32) == "fp32"  # the input is not changed
    for vi in (*fp16.graph.input, *fp16.graph.output):
        want = next(x for x in (*fp32.graph.input, *fp32.graph.output) if x.name == vi.name)
        assert vi.type.tensor_type.elem_type == want.type.tensor_type.elem_type, vi.name
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    floats = [t.data_type for t in fp16.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats.count(onnx.TensorProto.FLOAT16) > 0.8 * len(floats), floats
    kept = {n.op_type for n in fp16.graph.node if n.op_type in g.FP32_OPS}
    assert "LayerNormalization" in kept or "ReduceMean" in kept  # the normalisations are there and kept in fp32


def test_cast_fp16_of_a_transformer_is_valid_and_agrees(gpu_export):
    """A LayerNorm bias shared by several blocked nodes: one Cast per tensor, nodes in topological
    order (ONNX's checker and ONNX Runtime both accept it), logits within fp16 tolerance of fp32."""
    import onnx
    import onnxruntime as ort

    from edgeopt.metrics import sample_dataset
    from edgeopt.models.preprocess import Preprocessor

    fp32 = _onnx(gpu_export)
    fp16 = g.cast_fp16(fp32)
    onnx.checker.check_model(fp16)
    names = [n.name for n in fp16.graph.node if n.name]
    assert len(names) == len(set(names))
    feeds = Preprocessor(gpu_export)(sample_dataset(gpu_export, 12).samples)
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for m in (fp32, fp16)]
    assert outs[1].dtype == np.float32
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-2, rtol=1e-2)


def test_cast_fp16_runs_and_agrees_on_an_image_model(digits_onnx):
    """The cast graph in ONNX Runtime (CPU) against the float32 graph on real digits images."""
    import onnxruntime as ort

    from edgeopt.metrics import sample_dataset
    from edgeopt.models.preprocess import Preprocessor

    fp32 = _onnx(digits_onnx)
    if any(n.domain not in ("", "ai.onnx") for n in fp32.graph.node):
        pytest.skip("this digits export holds contrib ops, which have no float16 CPU kernels")
    fp16 = g.cast_fp16(fp32)
    assert g.precision_of(fp16) == "fp16"
    feeds = Preprocessor(digits_onnx)(sample_dataset(digits_onnx, 16).samples)
    outs = []
    for m in (fp32, fp16):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0])
    assert outs[1].dtype == np.float32 and outs[1].shape == outs[0].shape == (16, 10)
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-2, rtol=1e-2)
    assert (outs[1].argmax(1) == outs[0].argmax(1)).mean() >= 0.9


def test_format_parser_errors():
    path = Path("out/model.onnx")
    msg = g.format_parser_errors([{"node": 3, "name": "Attention_0", "op": "Attention",
                                   "desc": "No importer registered for op: Attention"}], path)
    assert msg == ("out/model.onnx: TensorRT's ONNX parser rejected the model: op Attention (node 'Attention_0'): "
                   "No importer registered for op: Attention; re-export without ONNX Runtime fusions: "
                   "`edgeopt export MODEL --target gpu-server`")
    # a node without a name is named by its index; no node at all is the graph
    msg = g.format_parser_errors([{"node": 7, "name": "", "op": "MatMulInteger", "desc": "unsupported"}], path, "jetson-orin")
    assert "op MatMulInteger (node #7): unsupported" in msg
    assert "`edgeopt quantize --ptq static --calib DATA --target jetson-orin`" in msg
    msg = g.format_parser_errors([{"node": -1, "name": None, "op": None, "desc": "Invalid\n   model   version"}], path)
    assert "(the graph): Invalid model version" in msg
    assert "check the op against TensorRT's ONNX operator support matrix" in msg
    assert "com.microsoft" in g.format_parser_errors([{"node": 0, "name": "n", "op": "X",
                                                       "desc": "op domain com.microsoft is unknown"}], path)


def test_format_parser_errors_many():
    errors = [{"node": i, "name": f"Gelu_{i}", "op": "FastGelu", "desc": "No importer registered for op: FastGelu"}
              for i in range(8)]
    msg = g.format_parser_errors(errors, Path("m.onnx"))
    assert msg.count("op FastGelu (node 'Gelu_") == 5
    assert "Gelu_4" in msg and "Gelu_5" not in msg
    assert "(and 3 more)" in msg
    assert msg.count("`edgeopt export MODEL --target gpu-server`") == 1  # the fix once
    long = g.format_parser_errors([{"node": 0, "name": "n", "op": "Foo", "desc": "x" * 1000}], Path("m.onnx"))
    assert "x" * 240 in long and "x" * 241 not in long


# ---------------------------------------------------------------------------------------------
# 7. ONNX Runtime's TensorRT EP options
# ---------------------------------------------------------------------------------------------

def test_ep_options_use_the_native_profile(gpu_export):
    profile = profile_for(gpu_export, "gpu-server", [])
    opts = ep_options(profile, "fp16")
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert opts["trt_profile_opt_shapes"] == "input_ids:8x128,attention_mask:8x128,token_type_ids:8x128"
    assert opts["trt_profile_max_shapes"] == "input_ids:32x128,attention_mask:32x128,token_type_ids:32x128"
    # the same --shapes strings the native road would be given rebuild exactly that profile
    per_input: dict[str, list[str]] = {}
    for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
        for entry in opts[k].split(","):
            name, shape = entry.split(":")
            per_input.setdefault(name, []).append(shape)
    assert parse_shapes([f"{n}:{':'.join(s)}" for n, s in per_input.items()]) == profile
    assert opts["trt_fp16_enable"] == "1" and opts["trt_int8_enable"] == "0"
    assert not any(k.startswith(("trt_engine_cache", "trt_timing_cache", "trt_dump_ep_context", "trt_ep_context")) for k in opts)


@pytest.mark.parametrize("precision, graph_int8, fp16, int8", [
    ("fp32", False, "0", "0"),
    ("fp16", False, "1", "0"),
    ("int8", True, "0", "1"),
    ("int8", False, "0", "0"),  # no Q/DQ: the EP would calibrate implicitly, which edgeopt never asks for
    ("best", True, "1", "1"),
    ("best", False, "1", "0"),
])
def test_ep_options_precision(precision, graph_int8, fp16, int8):
    opts = ep_options(PROFILE, precision, graph_int8=graph_int8)
    assert (opts["trt_fp16_enable"], opts["trt_int8_enable"]) == (fp16, int8)


def test_ep_options_caches_and_context_model(tmp_path, gpu_export):
    base = dict(get_target_options("gpu-server"))
    assert base == {"trt_fp16_enable": "1", "trt_timing_cache_enable": "1"}
    opts = ep_options(PROFILE, "fp32", engine_cache=tmp_path / "engine", timing_cache=tmp_path / "tc",
                      context_model=tmp_path / "model_ctx.onnx", base={**base, "device_id": "0"})
    assert opts["trt_fp16_enable"] == "0"  # the precision asked for wins over the target's default
    assert opts["device_id"] == "0"
    assert opts["trt_engine_cache_enable"] == "1" and opts["trt_engine_cache_path"] == str(tmp_path / "engine")
    assert opts["trt_timing_cache_enable"] == "1" and opts["trt_timing_cache_path"] == str(tmp_path / "tc")
    assert opts["trt_dump_ep_context_model"] == "1"
    assert opts["trt_ep_context_file_path"] == str(tmp_path / "model_ctx.onnx")
    assert opts["trt_ep_context_embed_mode"] == "0"  # the engine stays a file beside the context model
    assert all(isinstance(v, str) for v in opts.values())  # ONNX Runtime takes provider options as strings


def get_target_options(name: str) -> dict[str, str]:
    from edgeopt.targets import get_target

    return get_target(name).provider_options.get("TensorrtExecutionProvider", {})


# ---------------------------------------------------------------------------------------------
# stage config, tolerances and the judge of the engine-vs-ONNX-Runtime check
# ---------------------------------------------------------------------------------------------

def test_engine_config_defaults_and_rules():
    cfg = EngineConfig()
    assert (cfg.kind, cfg.precision, cfg.quantizer, cfg.runtime, cfg.hardware_compat) == ("engine", "fp16", "qdq", "tensorrt", "none")
    assert cfg.shapes == [] and cfg.version_compatible is False
    EngineConfig(precision="best", quantizer="modelopt", calib="data.jsonl")
    for kw, fragment in (
        (dict(quantizer="modelopt", precision="int8"), "--quantizer modelopt needs calibration data: give --calib DATA"),
        (dict(quantizer="modelopt", precision="fp16", calib="d.jsonl"), "--quantizer modelopt makes int8"),
        (dict(runtime="onnxruntime", version_compatible=True), "are for the TensorRT runtime"),
        (dict(runtime="onnxruntime", hardware_compat="ampere+"), "are for the TensorRT runtime"),
        (dict(precision="fp64"), "precision"),
        (dict(hardware_compat="hopper+"), "hardware_compat"),
        (dict(workspace_gb=0), "workspace_gb"),
    ):
        with pytest.raises(PydanticValidationError) as ei:
            EngineConfig(**kw)
        assert fragment in str(ei.value), (kw, str(ei.value))


def test_check_tolerances():
    assert check_tolerances("fp32", None, None) == (5e-3, 5e-3)
    assert check_tolerances("fp16", None, None) == (3e-2, 3e-2)
    assert check_tolerances("int8", None, None) == (None, None)
    assert check_tolerances("best", None, None) == (None, None)
    assert check_tolerances("fp16", 0.1, None) == (0.1, 3e-2)
    assert check_tolerances("int8", 0.5, 0.25) == (0.5, 0.25)


@pytest.fixture(scope="module")
def real_records(gpu_export, qdq_gpu, text_jsonl):
    """The comparisons the engine stage makes, on two real graphs: float32 vs its int8 Q/DQ copy."""
    from edgeopt.compare import CompareConfig, compare

    loose = compare(gpu_export, qdq_gpu, CompareConfig(data=str(text_jsonl), samples=16, providers_a=["CPUExecutionProvider"],
                                                       atol=0.5, rtol=0.5))
    tight = compare(gpu_export, qdq_gpu, CompareConfig(data=str(text_jsonl), samples=16, providers_a=["CPUExecutionProvider"],
                                                       atol=1e-7, rtol=1e-7))
    return loose.model_dump(mode="json"), tight.model_dump(mode="json")


def test_judge_real_records(real_records):
    loose, tight = real_records
    (out,) = tight["outputs"]
    assert out["name"] == "logits" and out["within_tolerance"] is False and out["top1_agreement"] == 1.0
    assert judge("int8", loose, allclose=False) == []
    assert judge("int8", tight, allclose=False) == []  # int8 is judged by agreement and cosine, not allclose
    assert judge("fp16", loose, allclose=True) == []
    failures = judge("fp32", tight, allclose=True)
    assert failures and failures[0].startswith("logits: max abs err ") and "max rel err" in failures[0]
    assert all(f.startswith("logits: ") for f in failures)


def test_judge_rules():
    from edgeopt.compare import OutputDiff

    def record(**kw) -> dict:
        base = dict(name="logits", shape=[16, 3], max_abs_err=1e-4, max_rel_err=1e-4, within_tolerance=True,
                    top1_agreement=1.0, cosine_mean=1.0, cosine_min=1.0)
        return {"outputs": [OutputDiff(**{**base, **kw}).model_dump(mode="json")]}

    assert judge("fp32", record(), allclose=True) == []
    assert judge("fp16", record(top1_agreement=0.98), allclose=True) == ["logits: top-1 agreement 0.980 < 0.99"]
    assert judge("int8", record(top1_agreement=0.96, cosine_min=0.985, within_tolerance=False), allclose=False) == []
    assert judge("int8", record(top1_agreement=0.9), allclose=False) == ["logits: top-1 agreement 0.900 < 0.95"]
    assert judge("best", record(cosine_min=0.9), allclose=False) == ["logits: min cosine 0.9000 < 0.98"]
    assert judge("fp32", record(cosine_min=0.9998), allclose=True) == ["logits: min cosine 0.9998 < 0.9999"]
    bad_shape = record(shape_b=[16, 4], max_abs_err=None, max_rel_err=None, within_tolerance=False, top1_agreement=None,
                       cosine_min=None)
    assert judge("fp16", bad_shape, allclose=True) == ["logits: shape [16, 4] != ONNX Runtime's [16, 3]"]
    assert judge("fp16", {"outputs": []}, allclose=True) == []


# ---------------------------------------------------------------------------------------------
# 8. `edgeopt engine`: bad inputs fail cleanly, before anything is written
# ---------------------------------------------------------------------------------------------

def _engine_fails(art_path, out: Path, *args, code: int = 2) -> str:
    proc = cli("engine", art_path, "-o", out, *args)
    return assert_clean_failure(proc, out, codes=(code,))


@needs_no_tensorrt
def test_cli_engine_without_tensorrt(gpu_export, tmp_path):
    line = _engine_fails(gpu_export.path, tmp_path / "eng")
    assert "tensorrt is not installed" in line and "pip install 'edgeopt[tensorrt]'" in line


@needs_no_tensorrt
def test_cli_engine_int8_from_qdq_passes_the_graph_checks(qdq_gpu, tmp_path):
    """The gpu-server Q/DQ graph passes every check; only the missing TensorRT stops it."""
    line = _engine_fails(qdq_gpu.path, tmp_path / "eng", "--precision", "int8")
    assert "tensorrt is not installed" in line
    line = _engine_fails(qdq_gpu.path, tmp_path / "eng", "--precision", "best", "-t", "jetson-orin")
    assert "tensorrt is not installed" in line


def test_cli_engine_int8_on_a_float_export(gpu_export, tmp_path):
    line = _engine_fails(gpu_export.path, tmp_path / "eng", "--precision", "int8")
    assert "has no Q/DQ nodes" in line
    assert "quantize first" in line and "--ptq static --calib DATA --target gpu-server" in line
    assert "--quantizer modelopt --calib DATA" in line


def test_cli_engine_asymmetric_int8(qdq_x86, tmp_path):
    line = _engine_fails(qdq_x86.path, tmp_path / "eng", "--precision", "int8")
    assert "TensorRT takes symmetric int8 Q/DQ only" in line and "uint8 (asymmetric)" in line
    assert "--target gpu-server" in line


def test_cli_engine_fused_export(cls_onnx, tmp_path):
    assert cls_onnx.manifest.model.target is None  # `edgeopt export` without --target: ONNX Runtime fusions
    line = _engine_fails(cls_onnx.path, tmp_path / "eng")
    assert "TensorRT cannot build this graph" in line and "com.microsoft" in line
    assert "`edgeopt export MODEL --target gpu-server`" in line


def test_cli_engine_dynamic_int8(cls_int8_dynamic, tmp_path):
    line = _engine_fails(cls_int8_dynamic.path, tmp_path / "eng", "--precision", "int8")
    assert "MatMulInteger" in line
    assert "ONNX Runtime's integer quantization, which TensorRT cannot run" in line
    assert "--ptq static --calib DATA --target gpu-server" in line


@pytest.mark.parametrize("args, fragment", [
    (["--shapes", "input_ids:1x1:8y128:32x512"], "--shapes 'input_ids:1x1:8y128:32x512': '8y128' is not a shape"),
    (["--shapes", "input_ids:1x1:8x128"], "write NAME:MIN:OPT:MAX"),
    (["--shapes", "input_ids:1:8:32"], "--shapes input_ids: rank 1 differs from the input's rank 2"),
    (["--shapes", "pixel_values:1x1:1x1:1x1"], "--shapes names input(s) pixel_values the model does not have"),
    (["--shapes", "input_ids:1x1:8x64:32x64"], "axis 'sequence' gets range"),
    (["-t", "x86"], "target 'x86' runs ONNX Runtime on the CPU, not TensorRT; engines are for gpu-server"),
    (["--quantizer", "modelopt", "--precision", "int8"], "--quantizer modelopt needs calibration data: give --calib DATA"),
    (["--quantizer", "modelopt"], "--quantizer modelopt makes int8"),
    (["--runtime", "onnxruntime", "--version-compatible"], "are for the TensorRT runtime"),
    (["--runtime", "onnxruntime", "--hardware-compat", "ampere+"], "are for the TensorRT runtime"),
    (["--workspace", "0"], "--workspace"),
])
def test_cli_engine_bad_options(gpu_export, tmp_path, args, fragment):
    assert fragment in _engine_fails(gpu_export.path, tmp_path / "eng", *args)


def test_cli_engine_bad_choices(gpu_export, tmp_path):
    for args in (["--precision", "fp64"], ["--hardware-compat", "hopper"], ["--runtime", "tvm"], ["--quantizer", "gptq"]):
        out = tmp_path / "eng"
        proc = cli("engine", gpu_export.path, "-o", out, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not out.exists()


def test_cli_engine_timing_cache_folder(gpu_export, tmp_path):
    (tmp_path / "tc").mkdir()
    line = _engine_fails(gpu_export.path, tmp_path / "eng", "--timing-cache", tmp_path / "tc")
    assert f"--timing-cache {tmp_path / 'tc'} is a folder; give a file (created if missing)" in line


def test_cli_engine_qdq_graph_with_float_precision(qdq_gpu, tmp_path):
    line = _engine_fails(qdq_gpu.path, tmp_path / "eng", "--precision", "fp16")
    assert "holds Q/DQ nodes, which make those layers int8: ask --precision int8 (or best)" in line
    line = _engine_fails(qdq_gpu.path, tmp_path / "eng", "--precision", "int8", "--quantizer", "modelopt", "--calib", "x.jsonl")
    assert "is already quantized (Q/DQ nodes); --quantizer modelopt quantizes a float graph" in line


def test_cli_engine_hf_model(tiny_text_classifier, tmp_path):
    line = _engine_fails(tiny_text_classifier, tmp_path / "eng")
    assert "is format 'hf'; an engine is built from an ONNX artifact" in line
    assert "`edgeopt export MODEL --target gpu-server`" in line


def test_cli_engine_nonexistent_path(tmp_path):
    line = _engine_fails(tmp_path / "nothing-here", tmp_path / "eng")
    assert "no such file or directory" in line


def test_engine_stage_float16_graph_refuses_fp32(gpu_export, tmp_path):
    """A float16 graph (what cast_fp16 writes) cannot become an fp32 engine (Python API, same checks)."""
    import onnx

    from edgeopt.stages.engine import engine

    fp16_art = tmp_path / "fp16-onnx"
    shutil.copytree(gpu_export.path, fp16_art)
    onnx.save(g.cast_fp16(_onnx(gpu_export)), str(fp16_art / "model.onnx"))
    (fp16_art / "manifest.json").unlink()
    finalize(fp16_art, gpu_export.manifest)
    out = tmp_path / "eng"
    with pytest.raises(ConfigError, match="is a float16 graph; build it --precision fp16, or export float32 for an fp32 engine"):
        engine(fp16_art, out, EngineConfig(precision="fp32"))
    assert not out.exists()
    with pytest.raises(ConfigError, match="has no Q/DQ nodes"):
        engine(fp16_art, out, EngineConfig(precision="int8"))
    assert not out.exists()


def test_recipe_with_an_engine_stage(tmp_path, tiny_text_classifier, text_jsonl):
    from edgeopt.recipe import load_recipe

    doc = {"name": "gpu", "model": str(tiny_text_classifier), "workdir": str(tmp_path / "work"),
           "stages": [{"name": "onnx", "kind": "export", "target": "gpu-server"},
                      {"name": "int8", "kind": "quantize", "ptq": "static", "calib": str(text_jsonl), "target": "gpu-server"},
                      {"name": "trt", "kind": "engine", "input": "int8", "precision": "best",
                       "shapes": ["input_ids:1x1:8x128:32x128", "attention_mask:1x1:8x128:32x128",
                                  "token_type_ids:1x1:8x128:32x128"],
                       "timing_cache": str(tmp_path / "timing.cache"), "check_data": str(text_jsonl)}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = load_recipe(path)
    trt = r.stages[-1]
    assert (trt.name, trt.kind) == ("trt", "engine")
    assert isinstance(trt.config, EngineConfig)
    assert trt.config.precision == "best" and trt.config.shapes[0] == "input_ids:1x1:8x128:32x128"
    assert parse_shapes(trt.config.shapes)["token_type_ids"] == [[1, 1], [8, 128], [32, 128]]

    proc = cli("run", "--validate", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "3 stages" in proc.stdout and "trt (engine)" in proc.stdout
    assert not (tmp_path / "work").exists()

    doc["stages"][-1].update(quantizer="modelopt", precision="int8")
    doc["stages"][-1].pop("check_data")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as ei:
        load_recipe(path)
    assert "stages[2] (trt)" in str(ei.value) and "--quantizer modelopt needs calibration data" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# 9. engine artifacts (format trt)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_engine(workdir, gpu_export) -> Artifact:
    """An engine artifact as `edgeopt engine` lays it out (written by hand: no GPU here), with real IO,
    tokenizer and source graph from the gpu-server export; model.engine holds placeholder bytes."""
    from edgeopt.stages.engine import EngineConfig as Cfg

    parent = gpu_export
    profile = profile_for(parent, "gpu-server", [])
    key = EngineKey(onnx_sha256=parent.manifest.files["model.onnx"], tensorrt="10.13.0.35", gpu=H100,
                    compute_capability="9.0", cuda="13.0", profiles=profile, precision="fp16")
    tmp = workdir / "engine-by-hand"
    (tmp / "source").mkdir(parents=True)
    shutil.copy2(parent.path / "model.onnx", tmp / "source" / "model.onnx")
    shutil.copytree(parent.path / "tokenizer", tmp / "tokenizer")
    (tmp / "model.engine").write_bytes(b"\x00placeholder, not a serialized engine" * 8)
    manifest = parent.manifest.child(
        stage="engine", config=Cfg().model_dump(), format="trt",
        model={"precision": "fp16", "road": "tensorrt", "file": "model.engine", "source": "source/model.onnx",
               "key": key.model_dump(), "layers": {"fp32": 3, "fp16": 40},
               "build": {"builder": "flags", "flags": ["FP16"], "target": "gpu-server", "fp16_cast": False}})
    finalize(tmp, manifest)
    return load_artifact(tmp)


def test_engine_artifact_manifest(fake_engine, gpu_export):
    from edgeopt.formats import handler_for
    from edgeopt.formats.trt import TrtHandler, TrtModel

    m = fake_engine.manifest
    assert m.format == "trt" and isinstance(m.model, TrtModel)
    assert m.model.key.profiles == profile_for(gpu_export, "gpu-server", [])
    assert m.io == gpu_export.manifest.io
    assert set(m.files) >= {"model.engine", "source/model.onnx"}
    assert m.lineage[-1].stage == "engine" and m.lineage[-1].parent_hash == gpu_export.manifest.digest()
    h = handler_for(fake_engine)
    assert isinstance(h, TrtHandler)
    assert h.model_files(fake_engine) == [fake_engine.path / "model.engine"]
    assert h.source_onnx(fake_engine) == fake_engine.path / "source" / "model.onnx"
    d = h.describe(fake_engine)
    assert d["engine"] == "model.engine (TensorRT runtime)"
    assert d["built for"] == f"TensorRT 10.13.0.35 on {H100} (sm_90), CUDA 13.0"
    assert d["portability"] == "this TensorRT version and GPU architecture only"
    assert d["profiles"] == ("input_ids:1x1..8x128..32x128, attention_mask:1x1..8x128..32x128, "
                             "token_type_ids:1x1..8x128..32x128")
    assert d["layers"] == "40 fp16, 3 fp32"
    # the EP road's artifact, portable both ways
    ep = m.model_copy(deep=True)
    ep.model = ep.model.model_copy(update={"road": "onnxruntime", "file": "model_ctx.onnx", "engine_files": ["engine/a.engine"],
                                           "key": ep.model.key.model_copy(update={"version_compatible": True,
                                                                                  "hardware_compat": "ampere+", "cuda": None})})
    ep_art = Artifact(fake_engine.path, ep)
    assert h.describe(ep_art)["engine"] == "model_ctx.onnx (ONNX Runtime TensorRT EP)"
    assert h.describe(ep_art)["portability"] == "version-compatible, hardware-compatible (ampere+)"
    assert h.describe(ep_art)["built for"] == f"TensorRT 10.13.0.35 on {H100} (sm_90)"
    assert h.model_files(ep_art) == [fake_engine.path / "model_ctx.onnx", fake_engine.path / "engine" / "a.engine"]


def test_cli_inspect_engine_artifact(fake_engine):
    proc = cli("inspect", fake_engine.path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "format trt (fp16), task text-classification" in out
    assert "engine: model.engine (TensorRT runtime)" in out
    assert f"built for: TensorRT 10.13.0.35 on {H100} (sm_90), CUDA 13.0" in out
    assert "profiles: input_ids:1x1..8x128..32x128, attention_mask:1x1..8x128..32x128, token_type_ids:1x1..8x128..32x128" in out
    assert "layers: 40 fp16, 3 fp32" in out
    assert "2. engine" in out and "sha256 verified" in out
    proc = cli("inspect", fake_engine.path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"]["key"]["tensorrt"] == "10.13.0.35"


@needs_no_tensorrt
def test_cli_engine_artifact_needs_tensorrt_to_run(fake_engine, gpu_export, tmp_path):
    for args in (["bench", fake_engine.path, "--runs", "1", "--warmup", "0", "--batch-sizes", "1"],
                 ["serve", fake_engine.path, "--port", "18731"],
                 ["compare", gpu_export.path, fake_engine.path]):
        line = assert_clean_failure(cli(*args), codes=(2,))
        assert f"tensorrt is not installed (needed for running the engine {fake_engine.path}" in line, args
        assert "pip install 'edgeopt[tensorrt]'" in line
    # rebuilding it here from its source graph gets as far as TensorRT
    line = _engine_fails(fake_engine.path, tmp_path / "rebuilt")
    assert "tensorrt is not installed" in line


# ---------------------------------------------------------------------------------------------
# TensorRT + a CUDA GPU: the whole road (skipped here, with the reason)
# ---------------------------------------------------------------------------------------------

def test_engine_build_on_gpu(workdir, gpu_export, text_jsonl):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: engines are built only where it is")
    from edgeopt.tensorrt.machine import gpu

    try:
        gpu_name, cc, _ = gpu()
    except NoGPU as e:
        pytest.skip(f"no CUDA GPU visible: {e}")
    sm = "sm_" + cc.replace(".", "")
    for precision in ("fp32", "fp16"):
        out = workdir / f"engine-{precision}"
        proc = cli("engine", gpu_export.path, "-o", out, "--precision", precision, "--data", text_jsonl, timeout=1800)
        assert proc.returncode == 0, proc.stderr
        assert f"{precision} engine, TensorRT {trt.__version__} on {gpu_name}" in proc.stdout
        art = load_artifact(out)
        m = art.manifest
        assert m.format == "trt" and m.model.precision == precision and m.model.road == "tensorrt"
        key = m.model.key
        assert key.tensorrt == trt.__version__
        assert key.compute_capability == cc and key.gpu == gpu_name
        assert key.onnx_sha256 == gpu_export.manifest.files["model.onnx"]
        assert key.profiles == profile_for(gpu_export, "gpu-server", [])
        assert key.precision == precision
        assert (out / "model.engine").stat().st_size > 1000
        assert (out / "source" / "model.onnx").is_file() and (out / "tokenizer").is_dir()
        assert m.model.build["builder"] == road(trt.__version__)
        assert m.model.build["fp16_cast"] is (precision == "fp16" and road(trt.__version__) == "typed")
        layers = m.model.layers
        assert layers.get(precision, 0) > 0, layers
        if precision == "fp32":
            assert not {"fp16", "bf16", "int8", "fp8", "int4"} & set(layers), layers
        assert m.metrics["layers"] == layers
        assert m.metrics["check"]["outputs"][0]["name"] == "logits"

        atol, rtol = check_tolerances(precision, None, None)
        proc = cli("compare", gpu_export.path, out, "--data", text_jsonl, "--atol", atol, "--rtol", rtol, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr

        proc = cli("inspect", out)
        assert proc.returncode == 0, proc.stderr
        assert f"format trt ({precision})" in proc.stdout
        assert f"built for: TensorRT {trt.__version__} on {gpu_name} ({sm})" in proc.stdout
        assert "profiles: input_ids:1x1..8x128..32x128" in proc.stdout


def test_targets_tensorrt_profiles():
    """targets/*.yaml: every TensorRT target carries profile defaults and symmetric int8 rules."""
    from edgeopt.targets import get_target, target_names

    trt_targets = [n for n in target_names() if get_target(n).runtime == "tensorrt"]
    assert {"gpu-server", "jetson-orin"} <= set(trt_targets)
    for name in trt_targets:
        spec = get_target(name)
        for axis in ("batch", "sequence"):
            lo, opt, hi = getattr(spec.profiles, axis)
            assert 1 <= lo <= opt <= hi, (name, axis)
        assert spec.export.fusions == "none", name
        assert spec.quantization.activation_symmetric is True and spec.quantization.weight_symmetric is True, name
    assert list(get_target("gpu-server").profiles.batch) == GPU_SERVER_AXES["batch"]
    assert list(get_target("gpu-server").profiles.sequence) == GPU_SERVER_AXES["sequence"]
    assert (REPO / "targets" / "gpu-server.yaml").is_file()


def test_version_tuple_of_a_prerelease_is_not_newer():
    from edgeopt.tensorrt.key import version_tuple

    assert version_tuple("10.0.0b6") == (10, 0, 0) < version_tuple("10.0.1.6")
    assert version_tuple("11.4.0.106") == (11, 4, 0, 106)


def test_below_the_profile_minimum_suggests_a_lower_minimum():
    from edgeopt.errors import InputError
    from edgeopt.tensorrt.profiles import check_within

    with pytest.raises(InputError, match=r"dimension 1 = 8 is outside the engine's profile \[16, 512\].*--shapes input_ids:1x8:8x128:32x512"):
        check_within({"input_ids": [[1, 16], [8, 128], [32, 512]]}, {"input_ids": (8, 8)})


def _modelopt_available() -> bool:
    try:
        from edgeopt.tensorrt.modelopt import modelopt_python

        modelopt_python()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _modelopt_available(), reason="NVIDIA ModelOpt is not set up (.ci/setup-modelopt, then EDGEOPT_MODELOPT_PYTHON)")
def test_modelopt_ptq_makes_a_tensorrt_legal_qdq_graph(gpu_export, text_jsonl, tmp_path):
    """--quantizer modelopt's first half, for real: ModelOpt's ONNX PTQ in its own venv, calibrated on
    real tokenized text on the CPU; the Q/DQ graph meets TensorRT's rules and runs in ONNX Runtime."""
    import onnxruntime as ort

    from edgeopt.metrics import sample_dataset
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.tensorrt.modelopt import quantize_for_tensorrt

    src = gpu_export.path / "model.onnx"
    before = src.read_bytes()
    out = quantize_for_tensorrt(gpu_export, src, tmp_path / "work", str(text_jsonl), 32)
    assert src.read_bytes() == before  # ModelOpt rewrites its input: it gets a copy
    q = g.load(out)
    assert g.precision_of(q) == "int8" and g.qdq_problems(q) == []
    zero_points = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points
    feeds = Preprocessor(gpu_export)(sample_dataset(gpu_export, 8).samples)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == ref.shape and np.isfinite(got).all()


def test_modelopt_missing_is_one_line(monkeypatch, tmp_path):
    from edgeopt.errors import MissingDependencyError
    from edgeopt.tensorrt.modelopt import modelopt_python

    monkeypatch.setenv("EDGEOPT_MODELOPT_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(MissingDependencyError, match="nvidia-modelopt.*EDGEOPT_MODELOPT_PYTHON=.*does not exist"):
        modelopt_python()
