"""Artifacts: manifest round trip, atomic writes, integrity checks, cache keys."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeopt.artifact import (ImagePreprocessing, IOSpec, LineageEntry, Manifest, TensorSpec, TextPreprocessing,
                              cache_key, finalize, load_artifact, sha256_file, write_artifact)
from edgeopt.errors import InputError


def _manifest(**changes) -> Manifest:
    io = IOSpec(
        inputs=[TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
                TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 3])],
        preprocessing=TextPreprocessing(tokenizer="tokenizer", max_length=128),
    )
    data = dict(format="onnx", task="text-classification", labels=["a", "b", "c"], io=io,
                model={"file": "model.onnx", "precision": "fp32", "opset": 17, "optimization": {"level": "basic"}},
                lineage=[LineageEntry(stage="source", config={"path": "/x"}),
                         LineageEntry(stage="export", parent_hash="ab" * 32, config={"atol": 1e-4, "batch_axis": True})],
                metrics={"numeric_check": {"outputs": {"logits": {"max_abs_err": 1.5e-7}}}, "size_bytes": 1234})
    data.update(changes)
    return Manifest(**data)


def _write(out: Path, payload: bytes = b"weights", manifest: Manifest | None = None) -> Manifest:
    with write_artifact(out) as tmp:
        (tmp / "model.onnx").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "vocab.txt").write_text("hello\n")
        m = finalize(tmp, manifest or _manifest())
    return m


def _siblings(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# --- manifest ------------------------------------------------------------------------------------

def test_manifest_json_round_trip():
    m = _manifest()
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert again.digest() == m.digest()
    assert isinstance(again.io.preprocessing, TextPreprocessing)


def test_manifest_round_trip_image_preprocessing():
    io = IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", 1, 8, 8])],
                outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
                preprocessing=ImagePreprocessing(size=[8, 8], channels=1, scale=1 / 16, mean=[0.5], std=[0.5]))
    m = _manifest(io=io, task="image-classification")
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert isinstance(again.io.preprocessing, ImagePreprocessing)
    assert again.io.preprocessing.scale == pytest.approx(1 / 16)


def test_manifest_digest_changes_with_content():
    assert _manifest().digest() != _manifest(labels=["a", "b", "x"]).digest()


def test_child_resets_files_and_metrics_and_extends_lineage():
    parent = _manifest(files={"model.onnx": "00" * 32})
    child = parent.child(stage="quantize", config={"ptq": "dynamic"}, model={"file": "model.onnx", "precision": "int8"})
    assert child.files == {} and child.metrics == {}
    assert [e.stage for e in child.lineage] == ["source", "export", "quantize"]
    assert child.lineage[-1].parent_hash == parent.digest()
    assert child.lineage[-1].config == {"ptq": "dynamic"}
    assert child.model.precision == "int8"
    assert parent.model.precision == "fp32"  # the parent is not modified


# --- write_artifact / finalize / load_artifact ------------------------------------------------------

def test_write_and_load_artifact(tmp_path):
    out = tmp_path / "art"
    m = _write(out)
    assert _siblings(tmp_path) == ["art"]
    assert set(m.files) == {"model.onnx", "sub/vocab.txt"}
    assert m.files["model.onnx"] == sha256_file(out / "model.onnx")
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["files"] == m.files
    art = load_artifact(out)
    assert art.manifest == m
    assert art.path == out
    assert art.name == "art"


def test_write_artifact_exception_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError, match="boom"):
        with write_artifact(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"partial")
            finalize(tmp, _manifest())
            raise RuntimeError("boom")
    assert not out.exists()
    assert _siblings(tmp_path) == []  # no .art.tmp-* left behind


def test_write_artifact_without_finalize_fails_and_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError, match="did not finish"):
        with write_artifact(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
    assert _siblings(tmp_path) == []


def test_failed_rewrite_keeps_previous_artifact_byte_identical(tmp_path):
    out = tmp_path / "art"
    _write(out, payload=b"version 1")
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError):
        with write_artifact(out) as tmp:
            (tmp / "model.onnx").write_bytes(b"version 2")
            finalize(tmp, _manifest())
            raise ValueError("stage failed after writing")
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert _siblings(tmp_path) == ["art"]
    load_artifact(out)  # still verifies


def test_successful_rewrite_replaces_artifact(tmp_path):
    out = tmp_path / "art"
    _write(out, payload=b"version 1")
    m2 = _write(out, payload=b"version 2")
    assert (out / "model.onnx").read_bytes() == b"version 2"
    assert load_artifact(out).manifest == m2
    assert _siblings(tmp_path) == ["art"]  # no .old- backup left


def test_tampered_file_raises_input_error_naming_file(tmp_path):
    out = tmp_path / "art"
    _write(out)
    (out / "sub" / "vocab.txt").write_text("edited\n")
    with pytest.raises(InputError, match=r"sub/vocab\.txt.*sha256"):
        load_artifact(out)
    load_artifact(out, verify=False)  # verification can be skipped


def test_missing_listed_file_raises_input_error(tmp_path):
    out = tmp_path / "art"
    _write(out)
    (out / "model.onnx").unlink()
    with pytest.raises(InputError, match=r"model\.onnx.*missing"):
        load_artifact(out)


def test_invalid_manifest_raises_input_error(tmp_path):
    out = tmp_path / "art"
    _write(out)
    (out / "manifest.json").write_text('{"format": "onnx"')
    with pytest.raises(InputError, match="manifest.json.*not a valid edgeopt manifest"):
        load_artifact(out)
    (out / "manifest.json").write_text(json.dumps({"format": "tflite", "task": "x", "io": {"inputs": [], "outputs": []}}))
    with pytest.raises(InputError, match="not a valid edgeopt manifest"):
        load_artifact(out)


def test_missing_path_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        load_artifact(tmp_path / "nope")


def test_plain_folder_raises_input_error(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="not a model"):
        load_artifact(tmp_path / "folder")


def test_file_instead_of_folder_raises_input_error(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        load_artifact(f)


def test_hf_folder_without_weights_raises_input_error(tmp_path, tiny_text_classifier):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_text_classifier / "config.json", d / "config.json")
    with pytest.raises(InputError, match="no model.safetensors"):
        load_artifact(d)


def test_adopted_hf_folder(tiny_text_classifier, tiny_feature_extractor, tiny_vit):
    cls = load_artifact(tiny_text_classifier).manifest
    assert (cls.format, cls.task, cls.labels) == ("hf", "text-classification", ["a", "b", "c"])
    assert [t.name for t in cls.io.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert cls.io.outputs[0].shape == ["batch", 3]
    emb = load_artifact(tiny_feature_extractor).manifest
    assert emb.task == "feature-extraction" and emb.labels is None
    assert emb.io.outputs[0].name == "embeddings" and emb.io.outputs[0].shape == ["batch", 32]
    assert emb.model.pooling == "mean"
    vit = load_artifact(tiny_vit).manifest
    assert vit.task == "image-classification"
    assert vit.io.inputs[0].shape == ["batch", 3, 16, 16]
    assert vit.io.preprocessing.size == [16, 16]
    assert vit.io.preprocessing.scale == pytest.approx(1 / 255)


# --- cache_key -------------------------------------------------------------------------------------

def test_cache_key_changes_with_config_and_parent():
    parent = _manifest()
    other_parent = _manifest(labels=["x", "y", "z"])
    k = cache_key(parent, "quantize", {"ptq": "dynamic"})
    assert k == cache_key(_manifest(), "quantize", {"ptq": "dynamic"})  # deterministic
    assert k != cache_key(parent, "quantize", {"ptq": "static"})
    assert k != cache_key(other_parent, "quantize", {"ptq": "dynamic"})
    assert k != cache_key(parent, "export", {"ptq": "dynamic"})
    assert k != cache_key(None, "quantize", {"ptq": "dynamic"})
    # key order in the config does not matter
    assert cache_key(parent, "s", {"a": 1, "b": 2}) == cache_key(parent, "s", {"b": 2, "a": 1})
