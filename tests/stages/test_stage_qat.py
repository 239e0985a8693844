"""QAT and torch-side PTQ, exported as a TensorRT-style QDQ graph (edgeopt/stages/qat.py,
edgeopt/models/fakequant.py), and the `quantize` CLI on PyTorch artifacts."""
from __future__ import annotations

import numpy as np
import pytest

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact
from edgeopt.data import load_dataset
from edgeopt.errors import ConfigError, InputError
from edgeopt.stages.qat import QATConfig, qat
from stage_helpers import assert_clean_failure, assert_no_output, assert_trt_style_qdq, cli, read_manifest, run_onnx

SENTENCES = [t for t, _ in TEXT_ROWS[:12]]
BERT_LINEARS = 2 * 6 + 2  # q, k, v, attn out, ffn in, ffn out per layer + pooler + classifier
CNN_LAYERS = 4  # 3 convs + classifier


def _check_qdq_artifact(art, mode: str, layers: int, samples, n_labels: int):
    m = read_manifest(art.path)
    assert m["format"] == "onnx" and m["model"]["precision"] == "int8"
    q = m["model"]["quantization"]
    assert q["mode"] == mode and q["zero_point"] == 0 and q["weight_type"] == q["activation_type"] == "int8"
    assert q["weight_symmetric"] and q["activation_symmetric"] and q["layers"] == layers
    fq = m["metrics"]["fake_quant"]
    assert fq["quantized_layers"] == layers and fq["uncalibrated"] == 0
    check = m["metrics"]["numeric_check"]
    rec = check["outputs"]["logits"]
    assert np.isfinite(rec["max_abs_err"])
    if check.get("mode") == "fidelity":  # int8 graph vs its fake-quant twin: held to agreement, not allclose
        assert rec["top1_agreement"] >= check["min_top1_agreement"] and rec["cosine_mean"] >= check["min_cosine"]
    else:
        assert rec["within_tolerance"]
    assert m["lineage"][-1]["stage"] == mode
    assert_trt_style_qdq(art.path / "model.onnx", min_layers=layers)
    out = run_onnx(load_artifact(art.path), samples)  # ONNX Runtime runs the QDQ graph
    assert out.shape == (len(samples), n_labels) and np.isfinite(out).all()
    return m


@pytest.fixture(scope="module")
def bert_qat(tmp_path_factory, tiny_text_classifier, kw_jsonl, kw_val_jsonl):
    out = tmp_path_factory.mktemp("qat") / "bert-qat"
    return qat(tiny_text_classifier, out, QATConfig(data=str(kw_jsonl), val_data=str(kw_val_jsonl), eval_data=str(kw_val_jsonl),
                                                    batch_size=16, min_top1_agreement=0.0))


def test_bert_qat(bert_qat):
    m = _check_qdq_artifact(bert_qat, "qat", BERT_LINEARS, SENTENCES, 3)
    fq = m["metrics"]["fake_quant"]
    assert len(fq["history"]) == 1 and np.isfinite(fq["history"][0]["train_loss"])
    assert 0 <= fq["history"][0]["val_accuracy"] <= 1
    ev = m["metrics"]["eval"]
    for k in ("parent_accuracy", "accuracy_after_calibration", "torch_accuracy", "accuracy", "top1_agreement"):
        assert 0 <= ev[k] <= 1, k
    assert ev["samples"] == 18
    assert ev["accuracy_drop_points"] == pytest.approx((ev["parent_accuracy"] - ev["accuracy"]) * 100)
    # the tokenizer travels with the ONNX artifact
    assert (bert_qat.path / "tokenizer").is_dir()


def test_bert_torch_side_ptq(tmp_path, tiny_text_classifier, kw_jsonl):
    art = qat(tiny_text_classifier, tmp_path / "ptq", QATConfig(data=str(kw_jsonl), train=False, calib_samples=24,
                                                                 batch_size=8, calibration="percentile", percentile=99.9))
    m = _check_qdq_artifact(art, "ptq-torch", BERT_LINEARS, SENTENCES, 3)
    fq = m["metrics"]["fake_quant"]
    assert fq["history"] == [] and fq["calib_samples"] == 24 and fq["calibration"] == "percentile"


@pytest.fixture(scope="module")
def digits_qat(tmp_path_factory, digits_torch, digits_npz):
    out = tmp_path_factory.mktemp("qat") / "digits-qat"
    return qat(digits_torch, out, QATConfig(data=str(digits_npz), batch_size=32, epochs=2, lr=1e-3))


def test_digits_qat(digits_qat, digits_npz):
    images = load_dataset(str(digits_npz)).samples[:16]
    m = _check_qdq_artifact(digits_qat, "qat", CNN_LAYERS, images, 10)
    assert [h["epoch"] for h in m["metrics"]["fake_quant"]["history"]] == [1, 2]
    # the conv weights are int8 initializers read by DequantizeLinear
    import onnx

    g = onnx.load(str(digits_qat.path / "model.onnx")).graph
    conv_weights = [n.input[1] for n in g.node if n.op_type == "Conv"]
    producers = {o: n for n in g.node for o in n.output}
    assert len(conv_weights) == 3
    for w in conv_weights:
        assert producers[w].op_type == "DequantizeLinear", producers[w].op_type


def test_digits_torch_side_ptq(tmp_path, digits_torch, digits_npz):
    art = qat(digits_torch, tmp_path / "ptq", QATConfig(data=str(digits_npz), train=False, eval_data=str(digits_npz),
                                                         min_top1_agreement=0.0))
    images = load_dataset(str(digits_npz)).samples[:16]
    m = _check_qdq_artifact(art, "ptq-torch", CNN_LAYERS, images, 10)
    assert m["metrics"]["eval"]["samples"] == 96


def test_qat_data_without_labels(tmp_path, digits_torch, digits_unlabelled_npz):
    with pytest.raises(InputError, match="no labels"):
        qat(digits_torch, tmp_path / "out", QATConfig(data=str(digits_unlabelled_npz)))
    assert_no_output(tmp_path / "out")


def test_qat_on_onnx_is_refused(tmp_path, digits_onnx, digits_npz):
    with pytest.raises(ConfigError, match="before `edgeopt export`"):
        qat(digits_onnx, tmp_path / "out", QATConfig(data=str(digits_npz)))


def test_fake_quant_is_symmetric_int8():
    import torch

    from edgeopt.models.fakequant import insert_fake_quant, quant_state, set_calibrating

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x = torch.randn(32, 8)
    ref = net(x).detach()
    assert insert_fake_quant(net) == ["0", "2"]
    assert quant_state(net) == {"quantized_layers": 2, "uncalibrated": 2}
    set_calibrating(net, True)
    with torch.no_grad():
        net(x)
    set_calibrating(net, False)
    assert quant_state(net)["uncalibrated"] == 0
    assert float(net[0].input_quant.amax) == pytest.approx(float(x.abs().max()))
    out = net(x).detach()
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.1)
    # weights: per output channel, symmetric, 0 maps to 0, at most 255 levels
    from edgeopt.models.fakequant import _weight_fq

    w = net[0].weight.detach()
    wq = _weight_fq(w)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    levels = torch.round(wq / scale)
    assert torch.allclose(levels * scale, wq, atol=1e-6)
    assert levels.min() >= -128 and levels.max() <= 127
    assert torch.equal(_weight_fq(torch.zeros(2, 3)), torch.zeros(2, 3))


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_quantize_qat_torch_artifact(tmp_path, digits_torch, digits_npz):
    out = tmp_path / "qat"
    proc = cli("quantize", digits_torch, "--qat", "--data", digits_npz, "-o", out, "--lr", "1e-3")
    assert proc.returncode == 0, proc.stderr
    assert "quantized" in proc.stdout and "qat int8" in proc.stdout
    assert read_manifest(out)["model"]["quantization"]["zero_point"] == 0
    assert_trt_style_qdq(out / "model.onnx", min_layers=CNN_LAYERS)


def test_cli_quantize_ptq_static_torch_artifact(tmp_path, digits_torch, digits_npz):
    out = tmp_path / "ptq"
    proc = cli("quantize", digits_torch, "--ptq", "static", "--calib", digits_npz, "-o", out, "--eval-data", digits_npz)
    assert proc.returncode == 0, proc.stderr
    assert "ptq-torch int8" in proc.stdout and "top1_agreement" in proc.stdout
    m = read_manifest(out)
    assert m["model"]["quantization"]["mode"] == "ptq-torch" and m["metrics"]["fake_quant"]["history"] == []
    assert_trt_style_qdq(out / "model.onnx", min_layers=CNN_LAYERS)


def test_cli_quantize_dynamic_on_torch_artifact(tmp_path, digits_torch):
    out = tmp_path / "int8"
    line = assert_clean_failure(cli("quantize", digits_torch, "--ptq", "dynamic", "-o", out), out, codes=(2,))
    assert "edgeopt export" in line and "--qat" in line


def test_cli_quantize_qat_on_onnx(tmp_path, digits_onnx, digits_npz):
    out = tmp_path / "qat"
    line = assert_clean_failure(cli("quantize", digits_onnx.path, "--qat", "--data", digits_npz, "-o", out), out, codes=(2,))
    assert "edgeopt export" in line
