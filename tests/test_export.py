"""Export: PyTorch / HF -> ONNX, checked with real ONNX Runtime sessions against the torch model."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact, sha256_file
from edgeopt.errors import ConfigError, InputError, ValidationError
from edgeopt.models import load_torch_model
from edgeopt.stages.export import ExportConfig, export

ATOL, RTOL = 1e-4, 1e-3
SENTENCES = [t for t, _ in TEXT_ROWS]


def _session(art) -> ort.InferenceSession:
    return ort.InferenceSession(str(art.path / art.manifest.model.file), providers=["CPUExecutionProvider"])


def _torch_out(parent_path, feeds: dict, names: list[str], task: str | None = None) -> np.ndarray:
    parent = load_artifact(parent_path)
    if task is not None and task != parent.manifest.task:
        from edgeopt.models.hf import adopt_hf_folder

        parent = adopt_hf_folder(parent.path, task=task)
    module = load_torch_model(parent)
    with torch.no_grad():
        out = module(*[torch.from_numpy(feeds[n]) for n in names])
    return out.numpy()


def _text_feeds(tok_dir: Path, texts: list[str], seq_len: int, names: list[str]) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in names}


def _check_manifest(art):
    m = art.manifest
    assert m.format == "onnx"
    assert m.model.file == "model.onnx" and m.model.precision == "fp32"
    assert [e.stage for e in m.lineage][-1] == "export"
    assert m.lineage[-1].config["atol"] == ATOL
    check = m.metrics["numeric_check"]
    assert check["samples"] >= 1
    assert set(check["outputs"]) == {t.name for t in m.io.outputs}
    for rec in check["outputs"].values():
        assert rec["within_tolerance"] is True
        assert 0 <= rec["max_abs_err"] <= check["atol"] + check["rtol"] * 100
    assert "model.onnx" in m.files
    for rel, digest in m.files.items():
        assert len(digest) == 64
        assert sha256_file(art.path / rel) == digest
    assert m.metrics["size_bytes"] == (art.path / "model.onnx").stat().st_size
    assert m.metrics["params"] > 0
    # the artifact reloads from disk, verifies, and its manifest is what export returned
    assert load_artifact(art.path).manifest == m
    onnx.checker.check_model(str(art.path / "model.onnx"))


# --- text models ----------------------------------------------------------------------------------

def test_export_text_classifier_manifest(cls_onnx):
    _check_manifest(cls_onnx)
    m = cls_onnx.manifest
    assert m.task == "text-classification" and m.labels == ["a", "b", "c"]
    assert [t.name for t in m.io.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m.io.outputs[0].name == "logits"
    assert m.io.preprocessing.tokenizer == "tokenizer"
    assert (cls_onnx.path / "tokenizer" / "tokenizer_config.json").is_file()
    assert m.model.optimization["level"] == "transformer-fusion"
    assert m.model.optimization["fused_ops"].get("Attention") == 2  # two layers
    assert not list(cls_onnx.path.glob("raw.onnx*"))


@pytest.mark.parametrize("fixture,parent_fixture", [("cls_onnx", "tiny_text_classifier"),
                                                    ("emb_onnx", "tiny_feature_extractor")])
def test_text_onnx_matches_torch_dynamic_axes(request, fixture, parent_fixture):
    art = request.getfixturevalue(fixture)
    parent = request.getfixturevalue(parent_fixture)
    names = [t.name for t in art.manifest.io.inputs]
    sess = _session(art)
    assert [i.name for i in sess.get_inputs()] == names
    for batch in (1, 3):
        for seq_len in (8, 24):
            feeds = _text_feeds(art.path / "tokenizer", SENTENCES[5:5 + batch], seq_len, names)
            (got,) = sess.run([art.manifest.io.outputs[0].name], feeds)
            ref = _torch_out(parent, feeds, names)
            width = 3 if art.manifest.task == "text-classification" else 32
            assert got.shape == ref.shape == (batch, width)
            np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)


def test_export_feature_extraction_manifest(emb_onnx):
    _check_manifest(emb_onnx)
    m = emb_onnx.manifest
    assert m.task == "feature-extraction" and m.labels is None
    assert m.io.outputs[0].name == "embeddings" and m.io.outputs[0].shape == ["batch", 32]


def test_export_classifier_as_feature_extractor(tmp_path, tiny_text_classifier):
    art = export(tiny_text_classifier, tmp_path / "emb", ExportConfig(task="feature-extraction", check_samples=4))
    assert art.manifest.task == "feature-extraction"
    names = [t.name for t in art.manifest.io.inputs]
    feeds = _text_feeds(art.path / "tokenizer", SENTENCES[:2], 12, names)
    (got,) = _session(art).run(None, feeds)
    assert got.shape == (2, 32)
    np.testing.assert_allclose(got, _torch_out(tiny_text_classifier, feeds, names, task="feature-extraction"),
                               atol=ATOL, rtol=RTOL)


def test_export_with_check_data(tmp_path, tiny_text_classifier, text_jsonl):
    art = export(tiny_text_classifier, tmp_path / "o", ExportConfig(check_data=str(text_jsonl), check_samples=10))
    check = art.manifest.metrics["numeric_check"]
    assert check["samples"] == 10 and check["data"] == str(text_jsonl)


def test_export_check_data_of_wrong_kind(tmp_path, tiny_text_classifier):
    with pytest.raises(InputError, match="holds image samples but the model takes text input"):
        export(tiny_text_classifier, tmp_path / "o", ExportConfig(check_data="sklearn:digits:test"))
    assert not (tmp_path / "o").exists()


# --- image models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture,parent_fixture,chw", [("vit_onnx", "tiny_vit", (3, 16, 16)),
                                                        ("digits_onnx", "digits_torch", (1, 8, 8))])
def test_image_onnx_matches_torch(request, fixture, parent_fixture, chw):
    art = request.getfixturevalue(fixture)
    parent = request.getfixturevalue(parent_fixture)
    _check_manifest(art)
    assert art.manifest.task == "image-classification"
    assert art.manifest.io.inputs[0].shape == ["batch", *chw]
    sess = _session(art)
    rng = np.random.default_rng(0)
    n_labels = {"vit_onnx": 2, "digits_onnx": 10}[fixture]
    for batch in (1, 3):
        x = rng.normal(size=(batch, *chw)).astype(np.float32)
        (got,) = sess.run(["logits"], {"pixel_values": x})
        ref = _torch_out(parent, {"pixel_values": x}, ["pixel_values"])
        assert got.shape == ref.shape == (batch, n_labels)
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)


def test_export_torch_factory_manifest(digits_onnx, digits_torch):
    m = digits_onnx.manifest
    assert m.labels == [str(i) for i in range(10)]
    assert m.model.optimization["level"] == "basic"
    assert m.metrics["numeric_check"]["data"] == "sklearn:digits:validation"
    assert m.metrics["numeric_check"]["samples"] == 16
    assert m.metrics["params"] == sum(p.numel() for p in load_torch_model(load_artifact(digits_torch)).parameters())
    assert [e.stage for e in m.lineage] == ["source", "export"]
    assert m.lineage[-1].parent_hash == load_artifact(digits_torch).manifest.digest()


def test_vit_manifest_output_width_matches_model(vit_onnx):
    (got,) = _session(vit_onnx).run(["logits"], {"pixel_values": np.zeros((1, 3, 16, 16), np.float32)})
    assert got.shape == (1, 2)
    assert vit_onnx.manifest.io.outputs[0].shape == ["batch", got.shape[1]]
    assert vit_onnx.manifest.labels is not None and len(vit_onnx.manifest.labels) == 2


def test_export_vit_fusions(vit_onnx):
    assert vit_onnx.manifest.model.optimization["level"] == "transformer-fusion"
    assert vit_onnx.manifest.model.optimization["model_type"] == "vit"


# --- options --------------------------------------------------------------------------------------

def test_no_batch_axis_fixes_batch_to_one(tmp_path, tiny_text_classifier):
    art = export(tiny_text_classifier, tmp_path / "fixed", ExportConfig(batch_axis=False, check_samples=3))
    for t in art.manifest.io.inputs:
        assert t.shape == [1, "sequence"]
    assert art.manifest.io.outputs[0].shape == [1, 3]
    model = onnx.load(str(art.path / "model.onnx"))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].HasField("dim_value") and dims[0].dim_value == 1
        assert dims[1].HasField("dim_param")  # the sequence stays dynamic
    sess = _session(art)
    names = [t.name for t in art.manifest.io.inputs]
    for seq_len in (8, 24):
        feeds = _text_feeds(art.path / "tokenizer", SENTENCES[:1], seq_len, names)
        (got,) = sess.run(["logits"], feeds)
        np.testing.assert_allclose(got, _torch_out(tiny_text_classifier, feeds, names), atol=ATOL, rtol=RTOL)
    with pytest.raises(Exception):  # batch 3 does not fit a fixed batch of 1
        sess.run(["logits"], _text_feeds(art.path / "tokenizer", SENTENCES[:3], 8, names))


def test_no_optimize(tmp_path, digits_torch):
    art = export(digits_torch, tmp_path / "plain", ExportConfig(optimize=False, check_samples=4))
    assert art.manifest.model.optimization == {"level": "none"}
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(np.float32)
    (got,) = _session(art).run(None, {"pixel_values": x})
    np.testing.assert_allclose(got, _torch_out(digits_torch, {"pixel_values": x}, ["pixel_values"]), atol=ATOL, rtol=RTOL)


def test_impossible_tolerance_raises_validation_error(tmp_path, tiny_text_classifier):
    out = tmp_path / "strict"
    with pytest.raises(ValidationError) as ei:
        export(tiny_text_classifier, out, ExportConfig(atol=1e-12, rtol=0))
    msg = str(ei.value)
    assert "logits" in msg and "max abs err" in msg
    assert ei.value.failures and ei.value.failures[0].startswith("logits:")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary sibling left


def test_export_of_onnx_artifact_is_config_error(tmp_path, cls_onnx):
    with pytest.raises(ConfigError, match="already format 'onnx'"):
        export(cls_onnx, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_task_override_on_torch_artifact_is_config_error(tmp_path, digits_torch):
    with pytest.raises(ConfigError, match="--task applies to Hugging Face checkpoints"):
        export(digits_torch, tmp_path / "o", ExportConfig(task="feature-extraction"))


def test_unknown_task_is_config_error(tmp_path, tiny_text_classifier):
    with pytest.raises(ConfigError, match="unknown task 'bogus'"):
        export(tiny_text_classifier, tmp_path / "o", ExportConfig(task="bogus"))
    assert not (tmp_path / "o").exists()


def test_export_config_bounds():
    from pydantic import ValidationError as PydanticValidationError

    with pytest.raises(PydanticValidationError):
        ExportConfig(opset=11)
    with pytest.raises(PydanticValidationError):
        ExportConfig(atol=0)
    with pytest.raises(PydanticValidationError):
        ExportConfig(exporter="tracing")
    with pytest.raises(PydanticValidationError):
        ExportConfig(unknown_option=1)


def test_external_data(tmp_path, monkeypatch, tiny_text_classifier):
    import edgeopt.formats.onnx as onnx_format
    import edgeopt.stages.export as export_mod

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 1000)
    monkeypatch.setattr(onnx_format, "EXTERNAL_DATA_BYTES", 1000)
    art = export(tiny_text_classifier, tmp_path / "ext", ExportConfig(check_samples=4))
    data_file = art.path / "model.onnx.data"
    assert data_file.is_file()
    assert data_file.stat().st_size > (art.path / "model.onnx").stat().st_size  # weights live outside the graph
    assert art.manifest.model.external_data is True
    assert "model.onnx.data" in art.manifest.files
    assert art.manifest.metrics["size_bytes"] == data_file.stat().st_size + (art.path / "model.onnx").stat().st_size
    model = onnx.load(str(art.path / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    # the artifact still loads (hashes verified) and runs in ONNX Runtime, also after moving it
    moved = Path(shutil.move(str(art.path), str(tmp_path / "moved")))
    loaded = load_artifact(moved)
    names = [t.name for t in loaded.manifest.io.inputs]
    feeds = _text_feeds(moved / "tokenizer", SENTENCES[:3], 16, names)
    (got,) = _session(loaded).run(["logits"], feeds)
    np.testing.assert_allclose(got, _torch_out(tiny_text_classifier, feeds, names), atol=ATOL, rtol=RTOL)


def test_external_data_artifact_can_be_quantized(tmp_path, monkeypatch, tiny_text_classifier):
    import edgeopt.formats.onnx as onnx_format
    import edgeopt.stages.export as export_mod
    from edgeopt.stages.quantize import QuantizeConfig, quantize

    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 1000)
    monkeypatch.setattr(onnx_format, "EXTERNAL_DATA_BYTES", 1000)
    art = export(tiny_text_classifier, tmp_path / "ext", ExportConfig(check_samples=4))
    q = quantize(art, tmp_path / "int8", QuantizeConfig(ptq="dynamic"))
    assert q.manifest.model.precision == "int8"
    assert (q.path / "model.onnx.data").is_file()
    assert not list(q.path.glob("preprocessed*"))
    assert q.manifest.metrics["eval"]["top1_agreement"] >= 0.9
    load_artifact(q.path)


# --- dynamo ---------------------------------------------------------------------------------------

def test_dynamo_exporter_image_model(tmp_path, digits_torch):
    art = export(digits_torch, tmp_path / "dyn", ExportConfig(exporter="dynamo", opset=18, check_samples=4))
    assert art.manifest.model.exporter == "dynamo"
    assert art.manifest.metrics["numeric_check"]["outputs"]["logits"]["within_tolerance"]
    sess = _session(art)
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 1, 8, 8)).astype(np.float32)
        (got,) = sess.run(None, {"pixel_values": x})
        np.testing.assert_allclose(got, _torch_out(digits_torch, {"pixel_values": x}, ["pixel_values"]),
                                   atol=ATOL, rtol=RTOL)


def test_dynamo_exporter_text_model(tmp_path, tiny_text_classifier):
    art = export(tiny_text_classifier, tmp_path / "dyn", ExportConfig(exporter="dynamo", opset=18, check_samples=4))
    assert art.manifest.model.exporter == "dynamo"
    names = [t.name for t in art.manifest.io.inputs]
    sess = _session(art)
    for batch, seq_len in ((1, 8), (3, 24)):
        feeds = _text_feeds(art.path / "tokenizer", SENTENCES[:batch], seq_len, names)
        (got,) = sess.run(["logits"], feeds)
        np.testing.assert_allclose(got, _torch_out(tiny_text_classifier, feeds, names), atol=ATOL, rtol=RTOL)
