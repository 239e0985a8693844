"""ONNX artifacts run by OpenVINO: the runtime, tune's OpenVINO variants and the artifact it writes,
and what bench, serve and package do with it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _support import TEXT_ROWS, write_openvino_artifact
from edgeopt.artifact import load_artifact
from edgeopt.data import load_dataset
from edgeopt.errors import TargetError
from edgeopt.models.preprocess import Preprocessor
from edgeopt.runtime import load_runtime
from edgeopt.tuning import TuneConfig, tune
from test_cli import cli

pytest.importorskip("openvino")

from edgeopt.runtime.openvino import OpenVinoRuntime, bf16_capable  # noqa: E402

QUICK = dict(rounds=1, batch_sizes=[1, 2], static=False, max_float_nodes=0, eval_samples=24)


def _feeds(art, data, n=8):
    pre = Preprocessor(art)
    return pre(load_dataset(str(data), kind=pre.kind).samples[:n])


def _cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_openvino_runs_the_onnx_file_as_onnx_runtime_does(emb_onnx, text_jsonl):
    feeds = _feeds(emb_onnx, text_jsonl)
    ref = load_runtime(emb_onnx).run(feeds)[0]
    ov = OpenVinoRuntime(emb_onnx.path / "model.onnx", threads=2, config={"INFERENCE_PRECISION_HINT": "f32"},
                         output_names=[t.name for t in emb_onnx.manifest.io.outputs])
    assert ov.input_names and set(ov.input_names) <= set(feeds)
    got = ov.run(feeds)[0]
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4)
    again = ov.run(feeds)[0]  # the request's buffers are reused: earlier results must not change
    np.testing.assert_array_equal(got, again)
    if bf16_capable():
        bf = OpenVinoRuntime(emb_onnx.path / "model.onnx", config={"INFERENCE_PRECISION_HINT": "bf16"}).run(feeds)[0]
        assert _cos(bf, ref).min() > 0.99


def test_a_thread_gets_its_own_request(emb_onnx, text_jsonl):
    import threading

    feeds = _feeds(emb_onnx, text_jsonl)
    ov = OpenVinoRuntime(emb_onnx.path / "model.onnx", config={"INFERENCE_PRECISION_HINT": "f32"})
    ref = ov.run(feeds)[0]
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(ov.run(feeds)[0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_allclose(r, ref, atol=1e-5)


def test_a_file_openvino_cannot_read_is_one_line(tmp_path):
    from edgeopt.errors import InputError

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"OpenVINO .* cannot load the model"):
        OpenVinoRuntime(bad)


@pytest.fixture(scope="module")
def ov_tuned(tmp_path_factory, emb_onnx, text_jsonl):
    """tune's search measuring the fp32 reference and the OpenVINO variants, then writing the OpenVINO f32
    one (whether OpenVINO beats ONNX Runtime's fp32 on a tiny model depends on the CPU: the choice is
    tested below, the writing here)."""
    root = tmp_path_factory.mktemp("ov-tune")
    res, cfg, said = write_openvino_artifact(emb_onnx, text_jsonl, root / "out", root / "cache", **QUICK)
    return res, root, cfg, said


def test_tune_picks_openvino_only_where_it_is_faster_than_fp32(emb_onnx, text_jsonl, tmp_path, monkeypatch):
    """Searching only OpenVINO variants: one faster than ONNX Runtime's fp32 is written; if none is
    (a tiny model, a CPU without bf16), nothing is, and the error says why."""
    from edgeopt.errors import ValidationError
    from edgeopt.tuning import search

    def plan(self):
        yield search.Variant(ptq="fp32")
        yield from self._openvino_variants()

    monkeypatch.setattr(search._Search, "_plan", plan)
    cfg = TuneConfig(data=str(text_jsonl), min_agreement=0.99, cache_dir="", **QUICK)
    try:
        res = tune(emb_onnx, tmp_path / "out", cfg, on_progress=lambda s: None)
    except ValidationError as e:
        assert "met it but ran slower than fp32 under ONNX Runtime" in str(e) and "nothing was written" in str(e)
        assert not (tmp_path / "out").exists()
    else:
        assert res.chosen.variant.runtime == "openvino" and res.chosen.speedup > 1
        assert load_artifact(tmp_path / "out").manifest.model.runtime == "openvino"


def test_tune_measures_openvino_and_writes_an_openvino_artifact(ov_tuned, emb_onnx, text_jsonl):
    res, root, _, said = ov_tuned
    labels = [t.label for t in res.trials]
    assert labels == ["fp32 (reference)", "OpenVINO f32 (fp32 graph)"] + ["OpenVINO bf16 (fp32 graph)"] * bf16_capable()
    assert len(said) >= len(labels)  # each reported as it ran
    for t in res.trials[1:]:
        assert t.error is None and t.variant.ptq == "float" and t.variant.runtime == "openvino"
        assert set(t.latency) == {1, 2} and t.speedup > 0 and t.meets_budget
        assert t.size_bytes == res.trials[0].size_bytes  # the fp32 file itself
    assert res.trials[1].quality["cosine_min"] > 0.9999  # float32: what ONNX Runtime computes

    chosen = res.chosen
    assert chosen.label == "OpenVINO f32 (fp32 graph)" and res.artifact == str((root / "out").resolve())
    art = load_artifact(root / "out")  # every file verified against the manifest
    m = art.manifest
    hint = chosen.variant.openvino_config["INFERENCE_PRECISION_HINT"]
    assert m.model.runtime == "openvino" and m.model.openvino_config == {"INFERENCE_PRECISION_HINT": hint}
    assert m.model.quantization is None and m.lineage[-1].stage == "tune"
    assert m.model.precision == ("bf16" if hint == "bf16" else "fp32") and m.model.dtype == "float32"
    assert m.metrics["eval"]["cosine_min"] > 0.99  # re-measured against the parent, as every stage's output is
    assert m.metrics["tune"]["chosen"] == chosen.variant.key()
    assert (root / "out" / "model.onnx").read_bytes() == (emb_onnx.path / "model.onnx").read_bytes()
    rt = load_runtime(art)
    assert isinstance(rt, OpenVinoRuntime) and rt.config["INFERENCE_PRECISION_HINT"] == hint
    feeds = _feeds(art, text_jsonl)
    assert _cos(rt.run(feeds)[0], load_runtime(emb_onnx).run(feeds)[0]).min() > 0.99
    assert chosen.label in (root / "out" / "report" / "tune.md").read_text()


def test_no_openvino_keeps_tune_on_onnx_runtime(ov_tuned, emb_onnx, text_jsonl, tmp_path):
    _, root, cfg, _ = ov_tuned
    res = tune(emb_onnx, tmp_path / "out", cfg.model_copy(update={"openvino": False, "min_agreement": 0.5}),
               on_progress=lambda s: None)
    assert not [t for t in res.trials if t.variant.runtime == "openvino"]
    assert load_artifact(tmp_path / "out").manifest.model.runtime == "onnxruntime"


def test_tune_says_when_openvino_is_not_installed(emb_onnx, text_jsonl, tmp_path, monkeypatch):
    import edgeopt._optional as optional

    real = optional.installed
    monkeypatch.setattr(optional, "installed", lambda m: False if m == "openvino" else real(m))
    said: list[str] = []
    res = tune(emb_onnx, tmp_path / "out", TuneConfig(data=str(text_jsonl), min_agreement=0.5, cache_dir="", **QUICK),
               on_progress=said.append)
    assert not [t for t in res.trials if t.variant.runtime == "openvino"]
    assert any("pip install 'edgeopt[openvino]'" in s for s in said)


def test_inspect_and_bench_an_openvino_artifact(ov_tuned, text_jsonl):
    _, root, _, _ = ov_tuned
    out = root / "out"
    p = cli("inspect", str(out))
    assert p.returncode == 0 and "runtime: openvino, INFERENCE_PRECISION_HINT=" in p.stdout
    p = cli("bench", str(out), "--data", str(text_jsonl), "--batch-sizes", "1,2", "--runs", "3", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["rows"] and all(r["p50_ms"] > 0 for r in rep["rows"])


def test_serve_an_openvino_artifact(ov_tuned, emb_onnx, text_jsonl):
    import httpx

    from serve.serve_helpers import live_server  # noqa: E402

    _, root, _, _ = ov_tuned
    texts = [text for text, _ in TEXT_ROWS[:3]]
    ref = load_runtime(emb_onnx).run(Preprocessor(emb_onnx)(texts))[0]
    with live_server(root / "out") as srv:
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": texts}, timeout=30)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["embeddings"], dtype=np.float32)
    assert _cos(got, ref).min() > 0.9999


@pytest.mark.parametrize("target", ["rpi5", "gpu-server"])
def test_package_refuses_an_openvino_artifact_for_another_kind_of_target(ov_tuned, target, tmp_path):
    from edgeopt.package.bundle import PackageConfig, package

    _, root, _, _ = ov_tuned
    with pytest.raises(TargetError, match="tuned to run under OpenVINO"):
        package(root / "out", tmp_path / "b", PackageConfig(target=target))
    assert not (tmp_path / "b").exists()


def test_package_puts_openvino_in_the_image(ov_tuned, tmp_path, monkeypatch):
    from edgeopt.package import wheelhouse
    from edgeopt.package.bundle import PackageConfig, package

    _, root, _, _ = ov_tuned
    calls = []
    monkeypatch.setattr(wheelhouse, "download", lambda spec, reqs, dest, find_links=None: calls.append(list(reqs)))
    b = package(root / "out", tmp_path / "b", PackageConfig(target="x86"))
    assert any(r.startswith("openvino") for r in calls[0]) and any(r.startswith("onnxruntime") for r in calls[0])
    assert b.checks["runtime"] == "openvino"
