"""Recipes chaining the compression stages: finetune (LoRA) -> merge -> prune -> distill -> qat."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError
from edgeopt.recipe import load_recipe, run_recipe
from stage_helpers import artifact_outputs, assert_trt_style_qdq, run_onnx

SENTENCES = [t for t, _ in TEXT_ROWS[:8]]


def _stages():
    return [
        {"name": "trained", "kind": "finetune", "train_data": "data/kw.jsonl", "val_data": "data/kw-val.jsonl",
         "epochs": 2, "batch_size": 16, "lr": 0.02, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        # the adapter goes back onto the original base (the finetune artifact already holds merged weights)
        {"name": "merged", "kind": "merge", "input": "model", "adapter": "{stages.trained}/adapter",
         "check_data": "data/kw-val.jsonl"},
        {"name": "pruned", "kind": "prune", "sparsity": 0.5, "structured": "neurons"},
        {"name": "student", "kind": "distill", "data": "data/kw.jsonl", "student_layers": 2, "epochs": 1, "batch_size": 16},
        {"name": "int8", "kind": "qat", "data": "data/kw.jsonl", "epochs": 1, "batch_size": 16, "calib_samples": 32},
    ]


def _write(folder, model, stages, name="compress"):
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": name, "model": str(model), "workdir": "work", "stages": stages}, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory, kw_jsonl, kw_val_jsonl):
    d = tmp_path_factory.mktemp("recipe")
    (d / "data").mkdir()
    shutil.copy(kw_jsonl, d / "data" / "kw.jsonl")
    shutil.copy(kw_val_jsonl, d / "data" / "kw-val.jsonl")
    return d


@pytest.fixture(scope="module")
def chain(recipe_dir, bert4):
    path = _write(recipe_dir, bert4, _stages())
    recipe = load_recipe(path)
    return recipe, run_recipe(recipe)


def test_chain_validates(chain, recipe_dir):
    recipe, _ = chain
    assert [(s.name, s.kind) for s in recipe.stages] == [("trained", "finetune"), ("merged", "merge"), ("pruned", "prune"),
                                                          ("student", "distill"), ("int8", "qat")]
    assert recipe.stages[0].config.train_data == str((recipe_dir / "data" / "kw.jsonl").resolve())
    assert recipe.stages[1].config.adapter == "{stages.trained}/adapter"  # substituted only when it runs
    assert recipe.workdir == recipe_dir / "work"


def test_chain_runs(chain, recipe_dir):
    _, res = chain
    work = recipe_dir / "work"
    assert [s.name for s in res.stages] == ["trained", "merged", "pruned", "student", "int8"]
    assert not any(s.cached for s in res.stages)
    arts = {s.name: load_artifact(s.path) for s in res.stages}

    merged = arts["merged"]
    assert merged.manifest.lineage[-1].config["adapter"] == str(work / "trained" / "adapter")
    # merge(base, finetune adapter) reproduces the finetune artifact
    np.testing.assert_allclose(artifact_outputs(merged, SENTENCES), artifact_outputs(arts["trained"], SENTENCES), atol=1e-4)

    assert json.loads((work / "pruned" / "config.json").read_text())["intermediate_size"] == 32
    student_cfg = json.loads((work / "student" / "config.json").read_text())
    assert student_cfg["num_hidden_layers"] == 2 and student_cfg["intermediate_size"] == 32
    assert arts["student"].manifest.metrics["teacher"]["params"] > arts["student"].manifest.metrics["student"]["params"]

    int8 = arts["int8"]
    assert int8.manifest.format == "onnx" and int8.manifest.model.precision == "int8"
    assert [e.stage for e in int8.manifest.lineage] == ["source", "merge", "prune", "distill", "qat"]
    assert_trt_style_qdq(int8.path / "model.onnx", min_layers=2 * 6 + 2)
    assert run_onnx(int8, SENTENCES).shape == (len(SENTENCES), 3)


def test_chain_second_run_is_cached(chain):
    recipe, first = chain
    again = run_recipe(recipe)
    assert all(s.cached for s in again.stages)
    assert [s.path for s in again.stages] == [s.path for s in first.stages]


@pytest.mark.parametrize("ref,why", [("int8", "a later stage"), ("nope", "an unknown stage"), ("merged", "the stage itself")])
def test_reference_to_a_stage_that_is_not_earlier(tmp_path, bert4, kw_jsonl, kw_val_jsonl, ref, why):
    stages = _stages()
    stages[1]["adapter"] = "{stages.%s}/adapter" % ref
    (tmp_path / "data").mkdir()
    shutil.copy(kw_jsonl, tmp_path / "data" / "kw.jsonl")
    shutil.copy(kw_val_jsonl, tmp_path / "data" / "kw-val.jsonl")
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, bert4, stages))
    msg = str(e.value)
    assert "1 problem(s)" in msg, msg
    assert "stages[1] (merged).adapter: '{stages.%s}' does not name an earlier stage" % ref in msg, msg
    assert not (tmp_path / "work").exists()


def test_invalid_stage_options_are_reported_together(tmp_path, bert4):
    stages = _stages()
    stages[2]["sparsity"] = 1.0
    stages[3]["student"] = "student.json"  # and student_layers: both given
    stages[4]["calibration"] = "mse"
    stages[0]["train_data"] = "data/missing.jsonl"
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, bert4, stages))
    msg = str(e.value)
    assert "stages[2] (pruned).sparsity" in msg
    assert "stages[3] (student)" in msg and "exactly one" in msg
    assert "stages[4] (int8).calibration" in msg
    assert "stages[0] (trained).train_data" in msg and "does not exist" in msg
