"""The CLI through its installed entry point, in real subprocesses."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _support import EDGEOPT_BIN, REPO
from edgeopt.artifact import finalize, load_artifact

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*args, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEOPT_QUIET": "1"}
    env.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess, out: Path | None = None, codes=(1, 2)) -> str:
    """Exit 1 or 2, exactly one non-empty stderr line 'error: ...', no traceback, no output left behind."""
    assert proc.returncode in codes, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return lines[0]


# --- happy paths ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cli_onnx(cli_workdir, tiny_text_classifier, text_jsonl) -> Path:
    out = cli_workdir / "onnx"
    proc = cli("export", tiny_text_classifier, "-o", out, "--data", text_jsonl)
    assert proc.returncode == 0, proc.stderr
    assert "exported" in proc.stdout and "logits: max abs err" in proc.stdout
    return out


@pytest.fixture(scope="module")
def cli_int8(cli_workdir, cli_onnx, text_jsonl) -> Path:
    out = cli_workdir / "int8"
    proc = cli("quantize", cli_onnx, "-o", out, "--ptq", "dynamic", "--eval-data", text_jsonl, "--target", "x86")
    assert proc.returncode == 0, proc.stderr
    assert "quantized" in proc.stdout and "dynamic int8 for x86" in proc.stdout
    assert "parent_accuracy" in proc.stdout and "top1_agreement" in proc.stdout
    return out


def test_cli_export(cli_onnx, text_jsonl):
    art = load_artifact(cli_onnx)
    assert art.manifest.format == "onnx"
    check = art.manifest.metrics["numeric_check"]
    assert check["data"] == str(text_jsonl) and check["outputs"]["logits"]["within_tolerance"]


def test_cli_quantize(cli_int8, cli_onnx):
    art = load_artifact(cli_int8)
    assert art.manifest.model.precision == "int8"
    assert art.manifest.lineage[-1].parent_hash == load_artifact(cli_onnx).manifest.digest()
    assert art.manifest.metrics["eval"]["samples"] == 40


def test_cli_bench_writes_reports(cli_workdir, cli_onnx, cli_int8, text_jsonl):
    js, md = cli_workdir / "bench" / "r.json", cli_workdir / "bench" / "r.md"
    proc = cli("bench", cli_onnx, cli_int8, "--data", text_jsonl, "--batch-sizes", "1,2", "--runs", "2", "--warmup", "0",
               "--seq-len", "16", "--threads", "1", "--json-out", js, "--report", md)
    assert proc.returncode == 0, proc.stderr
    assert "p50 ms" in proc.stdout and "int8" in proc.stdout
    rep = json.loads(js.read_text())
    assert [(r["artifact"], r["batch_size"]) for r in rep["rows"]] == [("onnx", 1), ("onnx", 2), ("int8", 1), ("int8", 2)]
    assert all(r["seq_len"] == 16 for r in rep["rows"])
    assert all(r["accuracy"] is not None for r in rep["rows"])
    assert rep["rows"][2]["top1_agreement"] is not None
    assert md.read_text().startswith("# edgeopt bench")
    assert md.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_cli_inspect(cli_int8):
    proc = cli("inspect", cli_int8)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "format onnx (int8), task text-classification" in out
    assert "labels (3): a, b, c" in out
    assert "input  input_ids: int64" in out
    assert "0. source" in out and "1. export" in out and "2. quantize" in out
    assert "sha256 verified" in out
    proc = cli("inspect", cli_int8, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == load_artifact(cli_int8).manifest.model_dump(mode="json")


def test_cli_inspect_hf_folder(tiny_text_classifier):
    proc = cli("inspect", tiny_text_classifier)
    assert proc.returncode == 0, proc.stderr
    assert "format hf" in proc.stdout and "not an edgeopt artifact" in proc.stdout


def test_cli_run_validate(tmp_path):
    from edgeopt.recipe import load_recipe

    recipe = REPO / "examples" / "digits" / "recipe.yaml"
    proc = cli("run", "--validate", recipe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and f"{len(load_recipe(recipe).stages)} stages" in proc.stdout
    assert "trained (finetune)" in proc.stdout and "report (bench)" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # validation writes nothing


def test_cli_targets_and_version():
    proc = cli("targets")
    assert proc.returncode == 0, proc.stderr
    for name in ("x86", "rpi", "jetson", "gpu-server"):
        assert name in proc.stdout
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("edgeopt ")


# --- bad inputs -----------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("export", tmp_path / "nope", "-o", out), out, codes=(2,))
    assert "no such file or directory" in line


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    line = assert_clean_failure(cli("export", tmp_path / "folder", "-o", out), out, codes=(2,))
    assert "not a model" in line


def test_truncated_onnx_fails_hash_check(tmp_path, cls_onnx):
    art = shutil.copytree(cls_onnx.path, tmp_path / "art")
    model = art / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    out = tmp_path / "out"
    line = assert_clean_failure(cli("quantize", art, "-o", out), out, codes=(2,))
    assert "model.onnx does not match its sha256" in line
    line = assert_clean_failure(cli("inspect", art), codes=(2,))
    assert "sha256" in line
    line = assert_clean_failure(cli("bench", art, "--runs", "1"), codes=(2,))
    assert "sha256" in line


@pytest.fixture
def truncated_rehashed(tmp_path, cls_onnx) -> Path:
    """A truncated model.onnx whose manifest hashes were recomputed: only ONNX Runtime can tell."""
    art = shutil.copytree(cls_onnx.path, tmp_path / "art")
    model = art / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    finalize(art, load_artifact(art, verify=False).manifest)
    load_artifact(art)  # hashes match again
    return art


def test_truncated_onnx_rejected_by_onnxruntime_in_bench(tmp_path, truncated_rehashed):
    line = assert_clean_failure(cli("bench", truncated_rehashed, "--runs", "1", "--warmup", "0", "--batch-sizes", "1"))
    assert "ONNX Runtime cannot load the model" in line


def test_truncated_onnx_rejected_in_quantize(tmp_path, truncated_rehashed):
    out = tmp_path / "out"
    assert_clean_failure(cli("quantize", truncated_rehashed, "-o", out), out)


def test_corrupted_safetensors(tmp_path, tiny_text_classifier):
    hf = shutil.copytree(tiny_text_classifier, tmp_path / "hf")
    w = hf / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    out = tmp_path / "out"
    line = assert_clean_failure(cli("export", hf, "-o", out), out, codes=(2,))
    assert "cannot load the checkpoint" in line


def test_unknown_task(tmp_path, tiny_text_classifier):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("export", tiny_text_classifier, "--task", "bogus", "-o", out), out, codes=(2,))
    assert "'bogus'" in line and "--task" in line and "text-classification" in line


def test_unknown_target(tmp_path, cls_onnx):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("quantize", cls_onnx.path, "--target", "foo", "-o", out), out, codes=(2,))
    assert "'foo'" in line and "--target" in line and "jetson" in line


def test_malformed_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nstages: [\n  {name: a, kind: export\n")
    line = assert_clean_failure(cli("run", p, cwd=tmp_path), codes=(2,))
    assert "malformed YAML at line" in line
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.yaml"]


def test_calibration_data_with_wrong_fields(tmp_path, cls_onnx, bad_jsonl):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("quantize", cls_onnx.path, "--ptq", "static", "--calib", bad_jsonl, "-o", out), out)
    assert "bad.jsonl:1: no 'text' or 'image' field" in line


def test_static_without_calib(tmp_path, cls_onnx):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("quantize", cls_onnx.path, "--ptq", "static", "-o", out), out, codes=(2,))
    assert "--calib" in line


def test_bad_option_values(tmp_path, cls_onnx):
    line = assert_clean_failure(cli("bench", cls_onnx.path, "--batch-sizes", "1,x"), codes=(2,))
    assert "--batch-sizes" in line
    line = assert_clean_failure(cli("bench", cls_onnx.path, "--seq-len", "long"), codes=(2,))
    assert "--seq-len" in line
    out = tmp_path / "out"
    line = assert_clean_failure(cli("export", cls_onnx.path, "--opset", "5", "-o", out), out, codes=(2,))
    assert "--opset" in line


def test_unknown_option_is_usage_error(tmp_path, tiny_text_classifier):
    out = tmp_path / "out"
    proc = cli("export", tiny_text_classifier, "-o", out, "--frobnicate")
    assert proc.returncode == 2
    assert "--frobnicate" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()
    proc = cli("export")  # missing arguments
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Missing" in proc.stderr


def test_debug_shows_traceback(tmp_path):
    out = tmp_path / "out"
    proc = cli("--debug", "export", tmp_path / "nope", "-o", out)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InputError" in proc.stderr and "no such file or directory" in proc.stderr
    assert not out.exists()


def test_calibration_data_with_wrong_fields_is_usage_error(tmp_path, cls_onnx, bad_jsonl):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("quantize", cls_onnx.path, "--ptq", "static", "--calib", bad_jsonl, "-o", out),
                                out, codes=(2,))
    assert "ONNX Runtime quantization failed" not in line
