"""Codecs without HTTP: the task registry, each codec's decode -> preprocess -> encode against the
in-process reference, batching invisible to them, and adding a task as one class plus one entry."""
from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from serve_helpers import TEXTS, check_prediction, digit_images, png_bytes

from edgeopt.artifact import Artifact
from edgeopt.serve.app import ServeSettings
from edgeopt.serve.codecs import (
    CODECS,
    Codec,
    FeatureExtractionCodec,
    ImageClassificationCodec,
    ImageCodec,
    Options,
    RequestError,
    TensorsCodec,
    TextClassificationCodec,
    TextCodec,
    codec_class,
    top_labels,
)

DIGITS = [str(i) for i in range(10)]


def _with(art, **changes) -> Artifact:
    """The same files under a manifest with ``changes`` (task, labels, io...)."""
    return Artifact(art.path, art.manifest.model_copy(update=changes))


def _settings(art, **kw) -> ServeSettings:
    return ServeSettings(artifact=str(art.path), **kw)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

def test_registry_covers_every_task():
    from edgeopt.artifact import TASKS

    # language models have no codec: edgeopt.serve.llm serves them (OpenAI routes; tests/serve/test_llm_serve.py)
    assert set(CODECS) == set(TASKS) - {"text-generation"}
    for task, cls in CODECS.items():
        assert issubclass(cls, Codec) and cls.field in ("inputs", "images") and cls.kind in ("text", "image"), task


def test_codec_class_by_task_and_preprocessing(serve_cls_onnx, serve_emb_onnx, serve_digits_onnx):
    assert codec_class(serve_cls_onnx) is TextClassificationCodec
    assert codec_class(serve_emb_onnx) is FeatureExtractionCodec
    assert codec_class(serve_digits_onnx) is ImageClassificationCodec
    # no preprocessing recorded: raw tensors only
    io = serve_cls_onnx.manifest.io.model_copy(update={"preprocessing": None})
    assert codec_class(_with(serve_cls_onnx, io=io)) is None
    # what the task's codec cannot serve gets the generic codec of its input kind (raw outputs by name)
    assert codec_class(_with(serve_cls_onnx, labels=None)) is TextCodec
    assert codec_class(_with(serve_cls_onnx, task="token-regression")) is TextCodec
    assert codec_class(_with(serve_digits_onnx, task="feature-extraction")) is ImageCodec


# ---------------------------------------------------------------------------------------------
# each codec: decode -> preprocess -> model -> encode equals the in-process reference
# ---------------------------------------------------------------------------------------------

def test_text_classification_codec_matches_reference(serve_cls_onnx, cls_ref):
    codec = TextClassificationCodec(serve_cls_onnx, _settings(serve_cls_onnx))
    codec.setup(cls_ref.rt)
    items = codec.decode(TEXTS[:4])
    body = codec.encode(cls_ref.rt.run(codec.preprocess(items)), Options(top_k=2))
    assert set(body) == {"predictions"}
    for text, pred in zip(TEXTS, body["predictions"]):
        check_prediction(pred, cls_ref.one(text), ["a", "b", "c"])
        assert len(pred["top"]) == 2


def test_feature_extraction_codec_matches_reference(serve_emb_onnx, emb_ref):
    codec = FeatureExtractionCodec(serve_emb_onnx, _settings(serve_emb_onnx))
    codec.setup(emb_ref.rt)
    body = codec.encode(emb_ref.rt.run(codec.preprocess(codec.decode(TEXTS[:3]))), Options())
    np.testing.assert_allclose(np.asarray(body["embeddings"]), emb_ref.outputs(TEXTS[:3])[0], atol=1e-5)


def test_batching_is_invisible_to_codecs(serve_digits_onnx, digits_ref):
    """Two callers' items preprocessed and run as one batch, each encoded from its own rows, answer as if alone."""
    codec = ImageClassificationCodec(serve_digits_onnx, _settings(serve_digits_onnx))
    codec.setup(digits_ref.rt)
    a = codec.decode([base64.b64encode(png_bytes(im)).decode() for im in digit_images(2)])
    b = codec.decode_files([png_bytes(im) for im in digit_images(3, seed=7)])
    out = digits_ref.rt.run(codec.preprocess(a + b))
    mine = codec.encode([o[:2] for o in out], Options(top_k=3))
    theirs = codec.encode([o[2:] for o in out], Options())
    alone = codec.encode(digits_ref.rt.run(codec.preprocess(b)), Options())
    assert _close(theirs, alone)
    for im, pred in zip(digit_images(2), mine["predictions"]):
        check_prediction(pred, digits_ref.one(im), DIGITS)
        assert [t["label"] for t in pred["top"]] == [DIGITS[i] for i in np.argsort(-digits_ref.one(im))[:3]]


def _close(x: dict, y: dict, atol: float = 1e-5) -> bool:
    for p, q in zip(x["predictions"], y["predictions"], strict=True):
        assert p["label"] == q["label"] and abs(p["score"] - q["score"]) <= atol
    return True


def test_generic_codec_answers_raw_outputs(serve_cls_onnx, cls_ref):
    art = _with(serve_cls_onnx, labels=None)
    codec = codec_class(art)(art, _settings(art))
    codec.setup(cls_ref.rt)
    body = codec.encode(cls_ref.rt.run(codec.preprocess(codec.decode(TEXTS[:2]))), Options())
    np.testing.assert_allclose(np.asarray(body["outputs"]["logits"]), cls_ref.outputs(TEXTS[:2])[0], atol=1e-5)


def test_top_labels():
    preds = top_labels(np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]]), ["a", "b", "c"], 1)
    assert [p["label"] for p in preds] == ["b", "a"] and all("top" not in p for p in preds)
    (pred,) = top_labels(np.array([[0.0, 2.0, 1.0]]), ["a", "b", "c"], 3)
    assert [t["label"] for t in pred["top"]] == ["b", "c", "a"]
    assert sum(t["score"] for t in pred["top"]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# decode errors: RequestError with the item's place in the request
# ---------------------------------------------------------------------------------------------

def test_image_decode_errors(serve_digits_onnx):
    codec = ImageCodec(serve_digits_onnx, _settings(serve_digits_onnx, max_image_pixels=100))
    good = base64.b64encode(png_bytes(np.zeros((8, 8)))).decode()
    # every item's base64 is checked before any image is decoded
    with pytest.raises(RequestError, match=r"^images\.2: not valid base64$"):
        codec.decode([good, base64.b64encode(b"not an image").decode(), "%%%"])
    with pytest.raises(RequestError, match=r"^images\.1: not a decodable image"):
        codec.decode([good, base64.b64encode(b"not an image").decode()])
    with pytest.raises(RequestError, match=r"^files\.0: 11x11 pixels is over the limit of 100"):
        codec.decode_files([png_bytes(np.zeros((11, 11)))])
    (img,) = codec.decode_files([png_bytes(np.full((10, 5), 7))])  # any size is resized to the model's
    assert img.shape == (8, 8) and img.dtype == np.float32
    assert ImageCodec.decode_off_loop and ImageCodec.accepts_files
    assert not TextCodec.decode_off_loop and not TextCodec.accepts_files


def test_tensors_codec(serve_digits_onnx, digits_ref):
    codec = TensorsCodec(serve_digits_onnx, _settings(serve_digits_onnx, max_items=2))
    codec.setup(digits_ref.rt)
    x = np.zeros((2, 1, 8, 8), np.float32)
    feeds = codec.decode({"pixel_values": x.tolist()})
    body = codec.encode(codec.predict(digits_ref.rt, feeds), Options())
    np.testing.assert_allclose(np.asarray(body["outputs"]["logits"]), digits_ref.rt.run({"pixel_values": x})[0], atol=1e-6)
    for value, msg in [({"x": [1]}, r"need exactly \['pixel_values'\]"),
                       ({"pixel_values": [[1.5, "a"]]}, "not a rectangular float32 array"),
                       ({"pixel_values": np.zeros((1, 1, 8, 9)).tolist()}, r"shape \[1, 1, 8, 9\] does not match"),
                       ({"pixel_values": np.zeros((3, 1, 8, 8)).tolist()}, "batch 3 over the limit of 2")]:
        with pytest.raises(RequestError, match=msg):
            codec.decode(value)

    class Refuses:
        def run(self, feeds):
            raise RuntimeError("bad index\nmore detail")

    with pytest.raises(RequestError, match=r"^tensors: the model rejected them \(bad index\)$"):
        codec.predict(Refuses(), feeds)


# ---------------------------------------------------------------------------------------------
# adding a task: one codec class and one registry entry, served end to end
# ---------------------------------------------------------------------------------------------

class ArgmaxCodec(TextCodec):
    """A made-up task: the index of the largest logit, in the `outputs` field the response schema has."""

    def encode(self, outputs, options):
        return {"outputs": {"argmax": outputs[0].argmax(axis=-1).tolist()}}


def test_a_new_task_is_one_codec_and_one_entry(serve_cls_onnx, cls_ref, monkeypatch):
    from starlette.testclient import TestClient

    from edgeopt.serve.app import create_app

    monkeypatch.setitem(CODECS, "argmax-task", ArgmaxCodec)
    art = _with(serve_cls_onnx, task="argmax-task")
    with TestClient(create_app(_settings(art, threads=1), art)) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").text
            time.sleep(0.05)
        r = c.post("/v1/predict", json={"inputs": TEXTS[:3]})
        assert c.get("/v1/model").json()["task"] == "argmax-task"
    assert r.status_code == 200, r.text
    assert r.json() == {"model": art.name,
                        "outputs": {"argmax": [int(np.argmax(cls_ref.one(t))) for t in TEXTS[:3]]}}
