"""What scripts and CI rely on: whole lines whatever the path length, --json on every command that
produces results, typed choices with completion, one-line usage errors, valid ports."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from _support import EDGEOPT_BIN, REPO


def cli(*args, cwd: Path | None = None, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "EDGEOPT_QUIET": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def deep(tmp_path: Path) -> Path:
    """A folder whose path is far longer than any terminal is wide (and has a '[' rich could eat)."""
    d = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i:02d}" for i in range(8)], "[run]")
    d.mkdir(parents=True)
    assert len(str(d)) > 250
    return d


def test_output_is_never_wrapped_when_not_a_terminal(tmp_path):
    d = deep(tmp_path)
    shutil.copytree(REPO / "examples" / "digits", d / "digits")
    recipe = d / "digits" / "recipe.yaml"
    proc = cli("run", "--validate", recipe, cwd=tmp_path, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert str(recipe) in lines[0] and "trained (finetune)" in lines[0] and "report (bench)" in lines[0]


def test_export_in_a_deep_folder_prints_whole_lines(tmp_path, tiny_text_classifier):
    out = deep(tmp_path) / "onnx"
    proc = cli("export", tiny_text_classifier, "-o", out, env={"COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    assert any(str(out) in ln for ln in proc.stdout.splitlines()), proc.stdout


# ---------------------------------------------------------------------------------------------
# --json
# ---------------------------------------------------------------------------------------------

def test_json_of_quantize_bench_targets_and_inspect(tmp_path, cls_onnx, text_jsonl):
    out = tmp_path / "int8"
    proc = cli("quantize", cls_onnx.path, "-o", out, "--ptq", "dynamic", "--eval-data", text_jsonl, "--json")
    assert proc.returncode == 0, proc.stderr
    q = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert q["artifact"] == str(out) and q["format"] == "onnx" and q["precision"] == "int8" and q["stage"] == "quantize"
    assert q["metrics"]["eval"]["accuracy"] is not None and q["model"]["quantization"]["mode"] == "dynamic"
    assert q["parent_hash"] == cls_onnx.manifest.digest()

    proc = cli("bench", cls_onnx.path, out, "--data", text_jsonl, "--runs", "2", "--warmup", "0", "--batch-sizes", "1",
               "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    b = json.loads(proc.stdout)
    assert [r["artifact"] for r in b["rows"]] == ["cls-onnx", "int8"] and b["rows"][1]["speedup"] > 0
    assert b["written"] == {}

    t = json.loads(cli("targets", "--json").stdout)
    assert {x["name"] for x in t["targets"]} >= {"x86", "rpi5", "jetson-orin"}
    i = json.loads(cli("inspect", out, "--json").stdout)
    assert i["format"] == "onnx"


def test_json_of_prune(tmp_path, tiny_text_classifier):
    out = tmp_path / "sparse"
    proc = cli("prune", tiny_text_classifier, "-o", out, "--sparsity", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert p["artifact"] == str(out) and p["format"] == "hf" and p["stage"] == "prune"
    assert p["metrics"]["prune"]["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_json_of_run_validate():
    proc = cli("run", "--validate", REPO / "examples" / "digits" / "recipe.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout)
    assert v["valid"] is True and v["stages"][0] == {"name": "trained", "kind": "finetune"}


# ---------------------------------------------------------------------------------------------
# choices, completion, usage errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, listed", [
    ("quantize", ["dynamic|static", "minmax|entropy|percentile", "x86"]),
    ("export", ["torchscript|dynamo", "text-classification|feature-extraction|image-classification"]),
    ("prune", ["heads|neurons|channels", "magnitude|taylor"]),
    ("serve", ["gpu-server"]),
])
def test_help_lists_choices(command, listed):
    proc = cli(command, "--help", env={"COLUMNS": "80"})
    assert proc.returncode == 0
    for text in listed:
        assert text in proc.stdout, (text, proc.stdout)
    assert "…" not in proc.stdout  # nothing cut off


def test_shell_completion_offers_choices():
    env = {"_EDGEOPT_COMPLETE": "complete_bash", "COMP_WORDS": "edgeopt quantize --method ", "COMP_CWORD": "3"}
    proc = cli(env=env)
    assert proc.returncode == 0 and proc.stdout.split() == ["minmax", "entropy", "percentile"]
    env.update(COMP_WORDS="edgeopt quantize m -o o --target ", COMP_CWORD="6")
    assert "rpi" in cli(env=env).stdout.split()
    assert "--install-completion" in cli("--help").stdout


def test_bad_choice_is_one_line_naming_the_values(tiny_text_classifier, tmp_path):
    line = one_error_line(cli("quantize", tiny_text_classifier, "-o", tmp_path / "o", "--ptq", "fast"))
    assert "'fast'" in line and "dynamic" in line and "static" in line
    line = one_error_line(cli("export", tiny_text_classifier, "-o", tmp_path / "o", "--exporter", "onnxscript"))
    assert "torchscript" in line and "dynamo" in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# serve ports
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_serve_rejects_bad_ports(port, cls_onnx):
    line = one_error_line(cli("serve", cls_onnx.path, "--port", port, timeout=60))
    assert "--port" in line


def test_serve_reports_a_port_in_use(cls_onnx):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = one_error_line(cli("serve", cls_onnx.path, "--port", port, timeout=60))
    assert "already in use" in line and str(port) in line


def test_serve_rejects_an_unknown_host(cls_onnx):
    line = one_error_line(cli("serve", cls_onnx.path, "--host", "no-such-host.invalid", "--port", "8765", timeout=60))
    assert "--host" in line


def test_serve_limits_are_named_by_their_option_or_variable(cls_onnx, tmp_path):
    """A bad limit names the option the user typed (or its environment variable), never an internal
    field such as timeout_s or a limit in bytes the user did not give."""
    line = one_error_line(cli("serve", cls_onnx.path, "--timeout", "0", cwd=tmp_path))
    assert line.startswith("error: --timeout: ") and "greater than 0" in line
    line = one_error_line(cli("serve", cls_onnx.path, cwd=tmp_path, env={"EDGEOPT_TIMEOUT_S": "-1"}))
    assert line.startswith("error: --timeout: ")
    line = one_error_line(cli("serve", cls_onnx.path, "--max-body-mb", "0", cwd=tmp_path))
    assert "'--max-body-mb'" in line and "0.001" in line
    line = one_error_line(cli("serve", cls_onnx.path, cwd=tmp_path, env={"EDGEOPT_MAX_BATCH": "many"}))
    assert "EDGEOPT_MAX_BATCH" in line
    assert list(tmp_path.iterdir()) == []


def test_validator_messages_carry_no_pydantic_prefix(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  - {name: a, kind: export, version: 7}\n")
    proc = cli("run", "--validate", recipe, cwd=tmp_path)
    assert proc.returncode == 2 and "version 7 is not one this edgeopt knows" in proc.stderr
    assert "Value error" not in proc.stderr
