"""The shipped examples, end to end (slow: trains a model)."""
from __future__ import annotations

import pytest

from _support import REPO
from edgeopt.artifact import load_artifact
from edgeopt.recipe import load_recipe, run_recipe


@pytest.mark.slow
def test_digits_recipe_end_to_end(tmp_path):
    recipe = load_recipe(REPO / "examples" / "digits" / "recipe.yaml")
    recipe.workdir = tmp_path / "runs"
    res = run_recipe(recipe)
    assert [s.name for s in res.stages][:3] == ["trained", "onnx", "int8"]
    assert not any(s.cached for s in res.stages)
    trained = load_artifact(tmp_path / "runs" / "trained")
    onnx = load_artifact(tmp_path / "runs" / "onnx")
    int8 = load_artifact(tmp_path / "runs" / "int8")
    assert trained.manifest.format == "torch" and onnx.manifest.format == "onnx"
    assert int8.manifest.model.precision == "int8" and int8.manifest.model.quantization["mode"] == "static"

    ev = int8.manifest.metrics["eval"]
    assert ev["data"] == "sklearn:digits:test" and ev["samples"] == 270
    assert ev["accuracy"] >= 0.95
    assert ev["parent_accuracy"] - ev["accuracy"] <= 0.01  # within 1 point of the fp32 ONNX model
    assert trained.manifest.metrics["test_accuracy"] == pytest.approx(ev["parent_accuracy"], abs=0.004)  # argmax ties aside, the same model

    rows = {(r.artifact, r.batch_size): r for r in res.stages[-1].report.rows}
    assert {(a, b) for a in ("trained", "onnx", "int8") for b in (1, 32)} <= set(rows)
    fp32_acc = rows[("trained", 1)].accuracy
    assert rows[("int8", 1)].accuracy >= 0.95
    assert fp32_acc - rows[("int8", 1)].accuracy <= 0.01
    assert rows[("onnx", 1)].accuracy == pytest.approx(fp32_acc)
    assert (tmp_path / "runs" / "report" / "report.png").is_file()
