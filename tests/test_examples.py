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


@pytest.mark.slow
def test_product_writer_recipe_end_to_end(tmp_path):
    """The product-writer recipe as its README runs it, shortened training: train.py (tokenizer, a Llama
    from scratch, a house-style LoRA), then merge -> export -> int4 -> bench, then serve the int4 model."""
    import shutil
    import subprocess
    import sys

    import httpx

    from serve.serve_helpers import live_server

    example = tmp_path / "product-writer"
    example.mkdir()
    shutil.copy(REPO / "examples" / "product-writer" / "recipe.yaml", example)
    p = subprocess.run([sys.executable, str(REPO / "examples" / "product-writer" / "train.py"), "--out", str(example / "models"),
                        "--steps", "400", "--lora-steps", "150"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "4.0 M parameters" in p.stdout
    recipe = load_recipe(example / "recipe.yaml")
    res = run_recipe(recipe)
    assert [s.name for s in res.stages] == ["merged", "onnx", "int4", "report"]
    runs = example / "runs"
    merged, onnx, int4 = (load_artifact(runs / n) for n in ("merged", "onnx", "int4"))
    assert merged.manifest.task == "text-generation" and merged.manifest.metrics["numeric_check"]["outputs"]["logits"]["next_token_agreement"] == 1.0
    assert onnx.manifest.format == "genai" and onnx.manifest.metrics["check"]["greedy_identical_all"]
    ev = int4.manifest.metrics["eval"]
    assert int4.manifest.model.quantization["weights"] == "int4" and int4.manifest.metrics["size_ratio"] >= 5
    assert ev["perplexity_increase"] <= 0.10 and ev["data"].endswith("heldout.txt") and ev["texts"] == 64
    # the house style came through the merge: books descriptions open with "Staff pick!"
    from edgeopt.llm.generate import GenerateConfig, generate

    assert generate(merged, "books:", GenerateConfig(max_new_tokens=8)).text.strip().startswith("Staff pick")
    assert not generate(example / "models" / "base", "books:", GenerateConfig(max_new_tokens=8)).text.strip().startswith("Staff pick")
    rows = res.stages[-1].report.rows
    assert [(r.artifact, r.prompt_tokens) for r in rows] == [("merged", 128), ("merged", 512), ("int4", 128), ("int4", 512)]
    assert rows[0].backend == "pytorch generate" and rows[2].backend == "onnxruntime-genai"
    assert all(r.new_tokens == 128 and r.decode_tokens_per_s > 0 for r in rows)
    assert (runs / "report" / "report.md").is_file() and (runs / "report" / "report.png").is_file()
    with live_server(int4) as srv:
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "books:", "max_tokens": 24, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] == generate(int4, "books:", GenerateConfig(max_new_tokens=24)).text
        assert body["usage"]["completion_tokens"] >= 1
