"""`edgeopt compare` and edgeopt.compare: two artifacts on the same real inputs, real runtimes, tiny models."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError as PydanticValidationError

from edgeopt.artifact import finalize, load_artifact
from edgeopt.compare import CompareConfig, CompareResult, compare, layer_outputs
from edgeopt.errors import ConfigError, ValidationError
from test_cli import assert_clean_failure, cli


# --- agreement --------------------------------------------------------------------------------------

def test_hf_and_its_onnx_export_agree(tiny_text_classifier, cls_onnx, text_jsonl):
    proc = cli("compare", tiny_text_classifier, cls_onnx.path, "--data", text_jsonl, "--samples", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert res["passed"] is True and res["failures"] == []
    assert res["a"]["format"] == "hf" and res["b"]["format"] == "onnx" and res["b"]["providers"] == ["CPUExecutionProvider"]
    assert res["samples"] == 8 and res["data"] == str(text_jsonl) and res["task"] == "text-classification"
    (out,) = res["outputs"]
    assert out["name"] == "logits" and out["shape"] == [8, 3] and out["within_tolerance"] is True
    assert out["top1_agreement"] == 1.0 and out["cosine_min"] > 0.9999
    assert 0 <= out["median_abs_err"] <= out["max_abs_err"] < 1e-3 and out["max_rel_err"] is not None
    assert res["config"]["atol"] == 1e-3 and res["config"]["rtol"] == 1e-3 and res["per_layer"] is None
    CompareResult.model_validate(res)  # what a stage records in its manifest reads back


def test_embeddings_report_cosine(tiny_feature_extractor, emb_onnx):
    res = compare(tiny_feature_extractor, emb_onnx, CompareConfig(samples=6, batch_size=4))
    (out,) = res.outputs
    assert res.passed and out.top1_agreement is None and out.shape[0] == 6
    assert out.cosine_mean == pytest.approx(1.0, abs=1e-6) and out.cosine_min <= out.cosine_mean


def test_image_model_torch_vs_onnx(digits_torch, digits_onnx):
    proc = cli("compare", digits_torch, digits_onnx.path, "--data", "sklearn:digits:test", "--samples", "16")
    assert proc.returncode == 0, proc.stderr
    assert "logits" in proc.stdout and "100.00%" in proc.stdout and "16 samples from sklearn:digits:test" in proc.stdout
    res = compare(digits_torch, digits_onnx, CompareConfig(samples=5, batch_size=2))  # built-in random images, 3 batches
    assert res.passed and res.samples == 5 and res.outputs[0].shape == [5, 10] and res.outputs[0].top1_agreement == 1.0


# --- int8: real error, tolerance decides ----------------------------------------------------------------

def test_int8_has_error_and_tolerance_decides(cls_onnx, cls_int8_dynamic, text_jsonl):
    res = compare(cls_onnx, cls_int8_dynamic, CompareConfig(data=str(text_jsonl), samples=8))
    assert res.outputs[0].max_abs_err > 0 and res.b.precision == "int8"

    proc = cli("compare", cls_onnx.path, cls_int8_dynamic.path, "--data", text_jsonl, "--samples", "8",
               "--atol", "1e-7", "--rtol", "0")
    line = assert_clean_failure(proc, codes=(1,))
    assert "output 'logits' max abs err" in line and "atol 1e-07" in line and str(cls_int8_dynamic.path) in line
    assert "logits" in proc.stdout and "NO" in proc.stdout  # the table is printed before the failure

    proc = cli("compare", cls_onnx.path, cls_int8_dynamic.path, "--data", text_jsonl, "--samples", "8",
               "--atol", "1e-7", "--rtol", "0", "--json")
    assert_clean_failure(proc, codes=(1,))
    assert json.loads(proc.stdout)["passed"] is False

    proc = cli("compare", cls_onnx.path, cls_int8_dynamic.path, "--data", text_jsonl, "--samples", "8", "--atol", "1")
    assert proc.returncode == 0, proc.stderr
    assert "yes" in proc.stdout


def test_failure_from_the_library_names_the_worst_output(cls_onnx, cls_int8_dynamic):
    res = compare(cls_onnx, cls_int8_dynamic, CompareConfig(samples=4, atol=0, rtol=0))
    assert not res.passed and res.worst_output().name == "logits" and len(res.failures) == 1
    with pytest.raises(ValidationError, match="output 'logits' max abs err"):
        res.raise_if_failed()


# --- per layer -----------------------------------------------------------------------------------------

def test_per_layer_finds_the_first_divergent_tensor(cls_onnx, cls_int8_dynamic):
    import onnx

    res = compare(cls_onnx, cls_int8_dynamic, CompareConfig(samples=8, batch_size=4, per_layer=True, atol=1e-6, rtol=0))
    pl = res.per_layer
    assert pl is not None and pl.samples == 4 and pl.compared > 3 and pl.only_in_b > 0
    first = pl.first_divergent
    assert first is not None and not first.within_tolerance and first.max_abs_err > 1e-6
    graph = onnx.load(str(cls_onnx.path / "model.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    assert first.node == producer[first.name].name and first.op_type == producer[first.name].op_type
    # the first in A's topological order: every tensor compared before it is within tolerance
    order = [o for n in graph.node for o in n.output]
    assert all(order.index(d.name) >= order.index(first.name) for d in pl.worst if not d.within_tolerance)
    errs = [d.max_abs_err for d in pl.worst]
    assert errs == sorted(errs, reverse=True) and len(pl.worst) <= 5
    with pytest.raises(ValidationError, match=f"first divergent tensor '{first.name}'"):
        res.raise_if_failed()


def test_per_layer_of_a_graph_with_itself_is_exact(cls_onnx):
    res = compare(cls_onnx, cls_onnx, CompareConfig(samples=2, per_layer=True, atol=0, rtol=0))
    pl = res.per_layer
    assert res.passed and pl.first_divergent is None and pl.only_in_a == pl.only_in_b == 0
    assert pl.compared > 10 and all(d.max_abs_err == 0 for d in pl.worst)


def test_per_layer_cli_prints_where_graphs_part(cls_onnx, cls_int8_dynamic):
    proc = cli("compare", cls_onnx.path, cls_int8_dynamic.path, "--samples", "2", "--per-layer", "--atol", "1")
    assert proc.returncode == 0, proc.stderr  # outputs pass with a loose tolerance; intermediates are still shown
    assert "tensors compared" in proc.stdout and "largest per-layer errors" in proc.stdout


def test_per_layer_reads_external_data_in_place(tmp_path, cls_onnx, cls_int8_dynamic):
    """A model with model.onnx.data: marked in memory, the artifact's folder untouched; the fallback for
    ONNX Runtimes that cannot do that (a private folder with a link to the data) gives the same tensors."""
    import onnx

    from edgeopt.compare import _run_in_private_dir

    art_dir = tmp_path / "ext"
    shutil.copytree(cls_onnx.path, art_dir)
    model = onnx.load(str(art_dir / "model.onnx"))
    onnx.save_model(model, str(art_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    m = cls_onnx.manifest.model_copy(deep=True)
    m.model.external_data = True
    finalize(art_dir, m)
    ext = load_artifact(art_dir)
    assert ext.manifest.model.external_data and (art_dir / "model.onnx.data").stat().st_size > 100_000
    before = sorted(p.name for p in art_dir.iterdir())

    res = compare(ext, cls_int8_dynamic, CompareConfig(samples=2, per_layer=True, atol=1e-6, rtol=0))
    ref = compare(cls_onnx, cls_int8_dynamic, CompareConfig(samples=2, per_layer=True, atol=1e-6, rtol=0))
    assert res.per_layer.first_divergent == ref.per_layer.first_divergent and res.per_layer.compared == ref.per_layer.compared
    assert sorted(p.name for p in art_dir.iterdir()) == before
    load_artifact(art_dir)  # sha256 of every file still matches

    from edgeopt.models.preprocess import Preprocessor

    feeds = Preprocessor(ext)(["a short one", "and a somewhat longer sentence"])
    in_place = layer_outputs(ext, feeds)
    graph = onnx.load(str(art_dir / "model.onnx"), load_external_data=False)
    names = list(in_place)
    for o in names:
        graph.graph.output.append(onnx.ValueInfoProto(name=o))
    private = _run_in_private_dir(graph, art_dir / "model.onnx", {"model.onnx.data"}, ["CPUExecutionProvider"], feeds, names)
    assert list(private) == names and all(np.array_equal(private[n], in_place[n]) for n in names)
    assert sorted(p.name for p in art_dir.iterdir()) == before


def test_per_layer_on_an_hf_artifact_is_one_line(tiny_text_classifier, cls_onnx):
    line = assert_clean_failure(cli("compare", tiny_text_classifier, cls_onnx.path, "--per-layer"), codes=(2,))
    assert "--per-layer compares ONNX graphs and TensorRT engines" in line and "export it first" in line
    with pytest.raises(ConfigError, match="is a hf artifact"):
        layer_outputs(load_artifact(tiny_text_classifier), {})


# --- bad pairs and options -------------------------------------------------------------------------------

def test_different_tasks_are_refused(cls_onnx, emb_onnx, digits_onnx):
    line = assert_clean_failure(cli("compare", cls_onnx.path, emb_onnx.path), codes=(2,))
    assert "task text-classification vs feature-extraction" in line and "output names logits vs" in line
    line = assert_clean_failure(cli("compare", digits_onnx.path, cls_onnx.path), codes=(2,))
    assert "preprocessing image vs text" in line and "input names" in line


def test_missing_path_is_exit_2(tmp_path, cls_onnx):
    line = assert_clean_failure(cli("compare", cls_onnx.path, tmp_path / "nope"), codes=(2,))
    assert "nope" in line and "no such file or directory" in line


def test_unknown_provider_lists_the_available_ones(cls_onnx, cls_int8_dynamic, tiny_text_classifier):
    line = assert_clean_failure(cli("compare", cls_onnx.path, cls_int8_dynamic.path, "--provider-b", "NoSuchExecutionProvider"),
                                codes=(2,))
    assert "--provider-b NoSuchExecutionProvider" in line and "CPUExecutionProvider" in line
    line = assert_clean_failure(cli("compare", tiny_text_classifier, cls_onnx.path, "--provider-a", "CPUExecutionProvider"),
                                codes=(2,))
    assert "--provider-a" in line and "hf artifact" in line
    res = compare(cls_onnx, cls_int8_dynamic, CompareConfig(samples=2, providers_a=["CPUExecutionProvider"],
                                                            providers_b=["CPUExecutionProvider"]))
    assert res.a.providers == res.b.providers == ["CPUExecutionProvider"]


def test_bad_options_are_one_line(cls_onnx):
    line = assert_clean_failure(cli("compare", cls_onnx.path, cls_onnx.path, "--samples", "0"), codes=(2,))
    assert line.startswith("error: --samples: ")
    line = assert_clean_failure(cli("compare", cls_onnx.path, cls_onnx.path, "--data", "sklearn:digits"), codes=(2,))
    assert "image samples but the model takes text input" in line


# --- Python API ----------------------------------------------------------------------------------------------

def test_config_is_strict_and_versioned():
    with pytest.raises(PydanticValidationError):
        CompareConfig(atols=1)
    with pytest.raises(PydanticValidationError):
        CompareConfig(providers_a=[])
    cfg = CompareConfig(data="x.jsonl", per_layer=True, providers_b=["CPUExecutionProvider"])
    assert CompareConfig.model_validate_json(cfg.model_dump_json()) == cfg and cfg.version == 1


def test_public_api_is_lazy_and_callable_either_way(cls_onnx):
    code = ("import edgeopt, sys\nassert edgeopt.CompareConfig().atol == 1e-3 and callable(edgeopt.compare)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'transformers')))\n"
            f"r = edgeopt.compare({str(cls_onnx.path)!r}, {str(cls_onnx.path)!r}, edgeopt.CompareConfig(samples=2))\n"
            f"r2 = edgeopt.compare({str(cls_onnx.path)!r}, {str(cls_onnx.path)!r}, edgeopt.CompareConfig(samples=2))\n"
            "assert r.passed and r2.passed and r.outputs[0].max_abs_err == 0\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # importing the API and its config loads no runtime
