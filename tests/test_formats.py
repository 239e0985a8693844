"""Typed formats: manifest.model is one pydantic model per format, and one handler per format owns
its files, its runtime and its description."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError as PydanticValidationError

from edgeopt.artifact import IOSpec, Manifest, load_artifact
from edgeopt.errors import InputError
from edgeopt.formats import HANDLERS, get_handler, handler_for
from edgeopt.formats.hf import HfModel
from edgeopt.formats.onnx import OnnxModel
from edgeopt.formats.torch import TorchModel

IO = IOSpec(inputs=[], outputs=[])


def test_model_section_is_typed_by_format():
    m = Manifest(format="onnx", task="text-classification", io=IO, model={"file": "model.onnx", "precision": "int8",
                                                                           "opset": 17})
    assert isinstance(m.model, OnnxModel) and m.model.precision == "int8" and m.model.opset == 17
    assert isinstance(Manifest(format="hf", task="t", io=IO, model={}).model, HfModel)
    assert isinstance(Manifest(format="torch", task="t", io=IO, model={"factory": "a:b"}).model, TorchModel)


def test_round_trip_keeps_every_key(tmp_path):
    m = Manifest(format="onnx", task="t", io=IO, model={"file": "model.onnx", "future_key": {"a": 1}})
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m and again.model.future_key == {"a": 1} and again.digest() == m.digest()


def test_manifest_written_before_typed_formats_still_loads():
    old = {"schema_version": 1, "format": "onnx", "task": "t", "io": IO.model_dump(),
           "model": {"file": "model.onnx", "precision": "fp32", "optimization": {"level": "basic"}}}
    m = Manifest.model_validate_json(json.dumps(old))
    assert m.model.format == "onnx" and m.model.optimization == {"level": "basic"}


def test_bad_model_sections_are_refused():
    with pytest.raises(PydanticValidationError, match="differs from format"):
        Manifest(format="onnx", task="t", io=IO, model={"format": "hf"})
    with pytest.raises(PydanticValidationError, match="factory"):
        Manifest(format="torch", task="t", io=IO, model={})  # a torch artifact must name its factory
    with pytest.raises(PydanticValidationError):
        Manifest(format="onnx", task="t", io=IO, model={"opset": "seventeen"})


def test_unknown_format_names_the_known_ones():
    with pytest.raises(InputError, match="known formats: hf, torch, onnx"):
        get_handler("tflite")


def test_handlers(cls_onnx, tiny_text_classifier, digits_torch):
    assert set(HANDLERS) == {"hf", "torch", "onnx", "trt", "genai"}
    onnx_art = cls_onnx
    h = handler_for(onnx_art)
    assert [f.name for f in h.model_files(onnx_art)] == ["model.onnx"]
    assert h.size_bytes(onnx_art) == (onnx_art.path / "model.onnx").stat().st_size
    desc = h.describe(onnx_art)
    assert desc["opset"] == 17 and desc["optimization"] == onnx_art.manifest.model.optimization["level"]
    rt = h.load_runtime(onnx_art, threads=1)
    assert rt.output_names == ["logits"]

    hf = load_artifact(tiny_text_classifier)
    assert [f.name for f in handler_for(hf).model_files(hf)] == ["model.safetensors"]
    torch_art = load_artifact(digits_torch)
    th = handler_for(torch_art)
    assert th.model_files(torch_art) == [torch_art.path / torch_art.manifest.model.weights]
    assert th.describe(torch_art)["factory"] == torch_art.manifest.model.factory


def test_inspect_prints_the_handlers_description(cls_onnx):
    from typer.testing import CliRunner

    from edgeopt.cli.main import app

    res = CliRunner().invoke(app, ["inspect", str(cls_onnx.path)])
    assert res.exit_code == 0, res.output
    assert "opset: 17" in res.output and "file: model.onnx" in res.output


def test_older_manifest_values_still_load():
    m = Manifest.model_validate({"format": "hf", "task": "feature-extraction", "io": IO.model_dump(),
                                 "model": {"pooling": "mean", "normalize": None, "attention_heads": 2}})
    assert m.model.normalize is False and m.model.attention_heads == 2


def test_unsupported_format_in_a_manifest_is_one_clear_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "tflite", "task": "t", "io": IO.model_dump(), "model": {}}))
    with pytest.raises(InputError, match="format 'tflite' is not supported by this edgeopt; known formats: hf, torch, onnx, trt"):
        load_artifact(tmp_path)
    # an engine manifest without its key (what it is bound to) is refused, naming the field
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "trt", "task": "t", "io": IO.model_dump(), "model": {}}))
    with pytest.raises(InputError, match="model.trt.key: Field required"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "onnx", "task": "t", "io": IO.model_dump(),
                                                         "model": {"opset": "x"}}))
    with pytest.raises(InputError, match=r"not a valid edgeopt manifest \(model\.onnx\.opset: "):
        load_artifact(tmp_path)
