"""Quantization: ONNX Runtime dynamic / static QDQ per target, with accuracy and fidelity recorded."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from pydantic import ValidationError as PydanticValidationError

from edgeopt.artifact import load_artifact, sha256_file
from edgeopt.errors import ConfigError, EdgeoptError, InputError, TargetError
from edgeopt.stages.quantize import QuantizeConfig, quantize

DIGITS_CALIB = dict(calib="sklearn:digits:train", calib_samples=32, eval_data="sklearn:digits:test", eval_samples=64)


def _qdq_zero_points(art) -> list[tuple[str, str, np.ndarray]]:
    """(op, input tensor name, zero point array) for every Q/DQ node with a zero-point initializer."""
    model = onnx.load(str(art.path / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(n.input) == 3, f"{n.name} has no zero point"
            zp = inits.get(n.input[2])
            assert zp is not None, f"{n.name}: zero point {n.input[2]} is not an initializer"
            out.append((n.op_type, n.input[0], numpy_helper.to_array(zp)))
    assert out, "no QuantizeLinear/DequantizeLinear nodes: the model was not statically quantized"
    return out


def _op_counts(art) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(art.path / "model.onnx")).graph.node)


def _static(parent, out, target, **kw):
    return quantize(parent, out, QuantizeConfig(ptq="static", target=target, **kw))


@pytest.fixture(scope="session")
def static_cls(tmp_path_factory, cls_onnx, text_jsonl):
    """Static QDQ quantizations of the tiny BERT classifier, one per target (built lazily)."""
    cache = {}

    def get(target):
        if target not in cache:
            cache[target] = _static(cls_onnx, tmp_path_factory.mktemp("q") / f"cls-{target}", target,
                                    calib=str(text_jsonl), calib_samples=16)
        return cache[target]

    return get


@pytest.fixture(scope="session")
def static_digits(tmp_path_factory, digits_onnx):
    cache = {}

    def get(target):
        if target not in cache:
            cache[target] = _static(digits_onnx, tmp_path_factory.mktemp("q") / f"digits-{target}", target, **DIGITS_CALIB)
        return cache[target]

    return get


# --- dynamic --------------------------------------------------------------------------------------

def test_dynamic_text_classifier(cls_int8_dynamic, cls_onnx, text_jsonl):
    q = cls_int8_dynamic
    m = q.manifest
    assert m.format == "onnx" and m.model.precision == "int8"
    rec = m.model.quantization
    assert rec["mode"] == "dynamic" and rec["target"] in ("x86", "rpi5")
    assert rec["activation_type"] == "uint8 (dynamic)"
    assert [e.stage for e in m.lineage] == ["source", "export", "quantize"]
    assert m.lineage[-1].parent_hash == cls_onnx.manifest.digest()
    ev = m.metrics["eval"]
    assert ev["data"] == str(text_jsonl) and ev["samples"] == 40
    for k in ("accuracy", "parent_accuracy", "accuracy_drop_points", "top1_agreement", "cosine_mean", "cosine_min"):
        assert k in ev
    assert 0 <= ev["accuracy"] <= 1 and 0 <= ev["parent_accuracy"] <= 1
    assert ev["accuracy_drop_points"] == pytest.approx((ev["parent_accuracy"] - ev["accuracy"]) * 100)
    assert ev["top1_agreement"] >= 0.9 and ev["cosine_mean"] > 0.99
    # int8 weights: much smaller than the fp32 parent
    assert m.metrics["parent_size_bytes"] == cls_onnx.manifest.metrics["size_bytes"]
    assert m.metrics["size_bytes"] < 0.5 * m.metrics["parent_size_bytes"]
    ops = _op_counts(q)
    assert ops["DynamicQuantizeLinear"] > 0 or ops["MatMulInteger"] > 0 or ops["DynamicQuantizeMatMul"] > 0
    # tokenizer travels with the artifact, every file hashed, no scratch files left
    assert (q.path / "tokenizer" / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in q.path.iterdir()) == ["manifest.json", "model.onnx", "tokenizer"]
    for rel, digest in m.files.items():
        assert sha256_file(q.path / rel) == digest
    assert load_artifact(q.path).manifest == m


def test_dynamic_accuracy_matches_own_measurement(cls_int8_dynamic, text_jsonl):
    """The recorded accuracy is what the int8 model really scores in ONNX Runtime."""
    from edgeopt.data import load_dataset
    from edgeopt.metrics import predict
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.runtime import load_runtime

    art = load_artifact(cls_int8_dynamic.path)
    ds = load_dataset(text_jsonl)
    logits = predict(load_runtime(art), Preprocessor(art), ds.samples, batch_size=5)[0]
    acc = float((logits.argmax(-1) == ds.label_indices(art.manifest.labels)).mean())
    assert acc == pytest.approx(art.manifest.metrics["eval"]["accuracy"])


def test_dynamic_without_eval_data_records_fidelity(tmp_path, emb_onnx):
    q = quantize(emb_onnx, tmp_path / "emb-int8", QuantizeConfig(ptq="dynamic"))
    ev = q.manifest.metrics["eval"]
    assert ev["data"] == "built-in sample sentences"
    assert "accuracy" not in ev and "top1_agreement" not in ev  # an embedder has no classes
    assert ev["cosine_mean"] > 0.95 and ev["cosine_min"] <= ev["cosine_mean"]


def test_dynamic_digits(tmp_path, digits_onnx):
    q = quantize(digits_onnx, tmp_path / "d", QuantizeConfig(ptq="dynamic", eval_data="sklearn:digits:test"))
    ev = q.manifest.metrics["eval"]
    assert ev["samples"] == 270
    assert "accuracy" in ev and "parent_accuracy" in ev and "accuracy_drop_points" in ev
    assert ev["cosine_mean"] > 0.9
    sess = ort.InferenceSession(str(q.path / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"pixel_values": np.zeros((3, 1, 8, 8), np.float32)})
    assert out.shape == (3, 10)


def test_max_accuracy_drop_within_limit_passes(tmp_path, cls_onnx, text_jsonl):
    q = quantize(cls_onnx, tmp_path / "q", QuantizeConfig(ptq="dynamic", eval_data=str(text_jsonl), max_accuracy_drop=50))
    assert q.manifest.metrics["eval"]["accuracy_drop_points"] <= 50


# --- static ---------------------------------------------------------------------------------------

def test_static_text_classifier_metrics(static_cls, cls_onnx, text_jsonl):
    q = static_cls("x86")
    rec = q.manifest.model.quantization
    assert rec["mode"] == "static" and rec["method"] == "minmax"
    assert rec["calib"] == str(text_jsonl) and rec["calib_samples"] == 16
    ev = q.manifest.metrics["eval"]
    assert ev["data"] == str(text_jsonl)  # calibration data doubles as eval data when none is given
    assert {"accuracy", "parent_accuracy", "accuracy_drop_points", "top1_agreement", "cosine_mean"} <= set(ev)
    assert ev["top1_agreement"] >= 0.9
    assert _op_counts(q)["QuantizeLinear"] > 0


def test_static_digits_metrics(static_digits, digits_onnx):
    q = static_digits("x86")
    ev = q.manifest.metrics["eval"]
    assert ev["data"] == "sklearn:digits:test" and ev["samples"] == 64
    assert ev["accuracy_drop_points"] == pytest.approx((ev["parent_accuracy"] - ev["accuracy"]) * 100)
    assert ev["cosine_mean"] > 0.9
    assert q.manifest.model.quantization["calib"] == "sklearn:digits:train"
    assert q.manifest.metrics["size_bytes"] > 0


@pytest.mark.parametrize("model", ["cls", "digits"])
@pytest.mark.parametrize("target", ["jetson", "gpu-server"])
def test_tensorrt_targets_use_symmetric_int8(request, model, target):
    """Activations and weights: int8 with zero point 0 (TensorRT accepts symmetric int8 only)."""
    q = request.getfixturevalue(f"static_{model}")(target)
    rec = q.manifest.model.quantization
    assert rec["activation_type"] == "int8" and rec["activation_symmetric"] is True and rec["weight_type"] == "int8"
    zps = _qdq_zero_points(q)
    for op, name, zp in zps:
        assert not zp.any(), f"{op} of {name}: zero point {zp} is not 0"
    quantize_zps = [zp for op, _, zp in zps if op == "QuantizeLinear"]
    assert quantize_zps and all(zp.dtype == np.int8 for zp in quantize_zps)


@pytest.mark.parametrize("model", ["cls", "digits"])
@pytest.mark.parametrize("target", ["jetson", "gpu-server"])
def test_tensorrt_targets_every_zero_point_is_int8_zero(request, model, target):
    q = request.getfixturevalue(f"static_{model}")(target)
    for op, name, zp in _qdq_zero_points(q):
        assert zp.dtype == np.int8, f"{op} of {name}: zero point dtype {zp.dtype}"
        assert not zp.any()


@pytest.mark.parametrize("model", ["cls", "digits"])
def test_x86_static_uses_uint8_activations(request, model):
    q = request.getfixturevalue(f"static_{model}")("x86")
    assert q.manifest.model.quantization["activation_type"] == "uint8"
    zps = _qdq_zero_points(q)
    act = [zp for op, _, zp in zps if op == "QuantizeLinear"]
    assert act and all(zp.dtype == np.uint8 for zp in act)
    # asymmetric activations: at least one non-zero zero point
    assert any(zp.any() for zp in act)
    weights = [zp for op, name, zp in zps if op == "DequantizeLinear" and zp.dtype != np.uint8 and zp.dtype != np.int32]
    assert weights and all(zp.dtype == np.int8 and not zp.any() for zp in weights)  # symmetric int8 weights


@pytest.mark.parametrize("model", ["cls", "digits"])
def test_rpi_static_uses_int8_activations(request, model):
    q = request.getfixturevalue(f"static_{model}")("rpi")
    assert q.manifest.model.quantization["activation_type"] == "int8"
    act = [zp for op, _, zp in _qdq_zero_points(q) if op == "QuantizeLinear"]
    assert act and all(zp.dtype == np.int8 for zp in act)
    assert q.manifest.model.quantization["activation_symmetric"] is False


def test_static_quantized_model_runs_and_agrees(static_digits, digits_onnx):
    q = static_digits("rpi")
    x = np.random.default_rng(0).uniform(-1, 1, size=(4, 1, 8, 8)).astype(np.float32)
    s_q = ort.InferenceSession(str(q.path / "model.onnx"), providers=["CPUExecutionProvider"])
    s_f = ort.InferenceSession(str(digits_onnx.path / "model.onnx"), providers=["CPUExecutionProvider"])
    (a,) = s_q.run(None, {"pixel_values": x})
    (b,) = s_f.run(None, {"pixel_values": x})
    assert a.shape == b.shape == (4, 10)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["jetson", "gpu-server"])
def test_dynamic_on_tensorrt_target_is_config_error(tmp_path, cls_onnx, target):
    with pytest.raises(ConfigError, match="TensorRT.*--ptq static"):
        quantize(cls_onnx, tmp_path / "q", QuantizeConfig(ptq="dynamic", target=target))
    assert list(tmp_path.iterdir()) == []


def test_static_without_calib_is_rejected():
    with pytest.raises(PydanticValidationError, match="calibration data"):
        QuantizeConfig(ptq="static")


def test_quantize_config_rejects_bad_values():
    with pytest.raises(PydanticValidationError):
        QuantizeConfig(ptq="qat")
    with pytest.raises(PydanticValidationError):
        QuantizeConfig(method="kl")
    with pytest.raises(PydanticValidationError):
        QuantizeConfig(max_accuracy_drop=-1)


@pytest.mark.parametrize("fixture", ["tiny_text_classifier", "digits_torch"])
def test_non_onnx_artifact_is_config_error(request, tmp_path, fixture):
    with pytest.raises(ConfigError, match="run `edgeopt export` first"):
        quantize(request.getfixturevalue(fixture), tmp_path / "q", QuantizeConfig())
    assert not (tmp_path / "q").exists()


def test_already_quantized_is_config_error(tmp_path, cls_int8_dynamic):
    with pytest.raises(ConfigError, match="already int8"):
        quantize(cls_int8_dynamic, tmp_path / "q", QuantizeConfig())


def test_unknown_target_is_target_error(tmp_path, cls_onnx):
    with pytest.raises(TargetError, match="unknown target 'foo'"):
        quantize(cls_onnx, tmp_path / "q", QuantizeConfig(target="foo"))
    assert not (tmp_path / "q").exists()


def test_bad_eval_data_is_input_error(tmp_path, cls_onnx, bad_jsonl):
    with pytest.raises(InputError, match="no 'text' or 'image' field"):
        quantize(cls_onnx, tmp_path / "q", QuantizeConfig(eval_data=str(bad_jsonl)))
    assert list(tmp_path.iterdir()) == []


def test_bad_calib_data_fails_and_leaves_nothing(tmp_path, cls_onnx, bad_jsonl):
    with pytest.raises(EdgeoptError, match=r"bad\.jsonl:1: no 'text' or 'image' field"):
        quantize(cls_onnx, tmp_path / "q", QuantizeConfig(ptq="static", calib=str(bad_jsonl)))
    assert list(tmp_path.iterdir()) == []


def test_bad_calib_data_is_input_error(tmp_path, cls_onnx, bad_jsonl):
    with pytest.raises(InputError) as ei:
        quantize(cls_onnx, tmp_path / "q", QuantizeConfig(ptq="static", calib=str(bad_jsonl)))
    assert ei.value.exit_code == 2
    assert "ONNX Runtime quantization failed" not in str(ei.value)



# ---------------------------------------------------------------------------------------------
# keeping nodes and op types in float
# ---------------------------------------------------------------------------------------------

def _nodes(art) -> dict[str, str]:
    return {n.name: n.op_type for n in onnx.load(str(art.path / "model.onnx")).graph.node}


def test_excluded_nodes_stay_float_and_are_recorded(tmp_path, emb_onnx):
    full = quantize(emb_onnx, tmp_path / "all", QuantizeConfig(ptq="dynamic"))
    fp32 = _nodes(emb_onnx)
    matmuls = sorted(n for n, t in fp32.items() if t == "MatMul")
    assert matmuls, fp32
    keep = matmuls[:2]
    part = quantize(emb_onnx, tmp_path / "part", QuantizeConfig(ptq="dynamic", exclude_nodes=keep))
    after, quantized = _nodes(part), _nodes(full)
    for name in keep:
        assert after.get(name) == "MatMul", (name, after.get(name))  # still the float MatMul, by name
        assert quantized.get(name) != "MatMul"  # which the full quantization replaced
    # the rest is quantized as before
    assert sum(t == "MatMulInteger" for t in after.values()) == sum(t == "MatMulInteger" for t in quantized.values()) - 2
    q = part.manifest.model.quantization
    assert q["excluded_nodes"] == keep and q["excluded_op_types"] == []
    assert part.manifest.metrics["eval"]["cosine_min"] >= full.manifest.metrics["eval"]["cosine_min"] - 1e-3


def test_excluded_op_types_stay_float(tmp_path, emb_onnx):
    part = quantize(emb_onnx, tmp_path / "no-matmul", QuantizeConfig(ptq="dynamic", exclude_op_types=["MatMul"]))
    ops = Counter(_nodes(part).values())
    assert ops["MatMulInteger"] == 0 and ops["MatMul"] == Counter(_nodes(emb_onnx).values())["MatMul"]
    assert part.manifest.model.quantization["excluded_op_types"] == ["MatMul"]


def test_unknown_exclusions_are_config_errors_naming_them(tmp_path, emb_onnx):
    name = next(n for n, t in _nodes(emb_onnx).items() if t == "MatMul")
    with pytest.raises(ConfigError, match="no node named 'nope'") as e:
        quantize(emb_onnx, tmp_path / "a", QuantizeConfig(ptq="dynamic", exclude_nodes=["nope"]))
    assert "quantizable nodes are e.g." in str(e.value)
    with pytest.raises(ConfigError, match=re.escape(f"closest: {name}")):
        quantize(emb_onnx, tmp_path / "b", QuantizeConfig(ptq="dynamic", exclude_nodes=[name + "x"]))
    with pytest.raises(ConfigError, match="--exclude-op-types Softmax: not an op type dynamic quantization quantizes"):
        quantize(emb_onnx, tmp_path / "c", QuantizeConfig(ptq="dynamic", exclude_op_types=["Softmax"]))
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_cli_exclusions(tmp_path, emb_onnx):
    from test_cli import assert_clean_failure, cli

    matmuls = sorted(n for n, t in _nodes(emb_onnx).items() if t == "MatMul")
    r = cli("quantize", emb_onnx.path, "-o", tmp_path / "q", "--exclude-nodes", f"{matmuls[0]},{matmuls[1]}",
            "--exclude-nodes", matmuls[2], "--json")
    assert r.returncode == 0, r.stderr
    q = load_artifact(tmp_path / "q").manifest.model.quantization
    assert q["excluded_nodes"] == matmuls[:3]
    r = cli("quantize", emb_onnx.path, "-o", tmp_path / "bad", "--exclude-op-types", "Nope")
    assert "Nope" in assert_clean_failure(r, tmp_path / "bad", codes=(2,))
    r = cli("quantize", emb_onnx.path, "-o", tmp_path / "bad", "--exclude-nodes", " , ")
    assert "--exclude-nodes: no name given" in assert_clean_failure(r, tmp_path / "bad", codes=(2,))
