"""`edgeopt export --target`: the profile's opset / dtype / fusions, and a graph its runtime can run.

A TensorRT target (gpu-server) gets standard ONNX ops only (ONNX Runtime's basic rewrites, no
com.microsoft fusions); a CPU target (rpi5) keeps ONNX Runtime's transformer fusions. The model is
conftest's tiny random BERT classifier (2 layers, hidden 32): a BERT whose graph the fusions match.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _support import EDGEOPT_BIN
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError, EdgeoptError, TargetError
from edgeopt.stages.export import ExportConfig, apply_target, export
from edgeopt.targets import STANDARD_DOMAINS, TENSORRT_REJECTS, get_target, unsupported_ops

TENSORRT = ["gpu-server", "jetson-orin", "jetson-thor", "jetson-xavier"]


def cli(*args, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEOPT_QUIET": "1"}
    env.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], check=False, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def _nodes(art):
    import onnx

    model = onnx.load(str(art.path / art.manifest.model.file))
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    return model, nodes


def _domains(art) -> set[str]:
    return {n.domain for n in _nodes(art)[1]}


def _default_opset(art) -> int:
    model, _ = _nodes(art)
    return next(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)


def _assert_numeric_check_passed(art):
    check = art.manifest.metrics["numeric_check"]
    assert check["mode"] == "allclose" and check["samples"] > 0
    assert check["outputs"], check
    for name, rec in check["outputs"].items():
        assert rec["within_tolerance"] is True, (name, rec)


def _assert_no_output(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export-target")


@pytest.fixture(scope="module")
def trt_onnx(workdir, tiny_text_classifier):
    return export(tiny_text_classifier, workdir / "gpu-server", ExportConfig(target="gpu-server"))


@pytest.fixture(scope="module")
def rpi5_onnx(workdir, tiny_text_classifier):
    return export(tiny_text_classifier, workdir / "rpi5", ExportConfig(target="rpi5"))


@pytest.fixture(scope="module")
def trt_opset18(workdir, tiny_text_classifier):
    return export(tiny_text_classifier, workdir / "gpu-server-18", ExportConfig(target="gpu-server", opset=18))


# ---------------------------------------------------------------------------------------------
# TensorRT target: standard ONNX ops only
# ---------------------------------------------------------------------------------------------

def test_tensorrt_export_has_standard_ops_only(trt_onnx):
    domains = _domains(trt_onnx)
    assert domains <= STANDARD_DOMAINS, domains
    assert "com.microsoft" not in domains
    ops = {n.op_type for n in _nodes(trt_onnx)[1]}
    assert not ops & TENSORRT_REJECTS
    assert "Attention" not in ops and "SkipLayerNormalization" not in ops
    for name in TENSORRT:  # every TensorRT runtime can parse it
        assert unsupported_ops(get_target(name), trt_onnx.path / "model.onnx") == [], name


def test_tensorrt_export_manifest(trt_onnx):
    m = trt_onnx.manifest
    assert m.model.target == "gpu-server"
    assert m.model.optimization == {"level": "basic"}
    assert m.model.opset == 17 == get_target("gpu-server").export.opset == _default_opset(trt_onnx)
    assert m.model.dtype == "float32" and m.model.precision == "fp32"
    assert m.lineage[-1].stage == "export" and m.lineage[-1].config["target"] == "gpu-server"
    assert load_artifact(trt_onnx.path).manifest == m  # reloads and verifies from disk


def test_tensorrt_export_passes_the_numeric_check(trt_onnx):
    import onnx

    _assert_numeric_check_passed(trt_onnx)
    onnx.checker.check_model(str(trt_onnx.path / "model.onnx"))


def test_both_graphs_compute_the_same(trt_onnx, rpi5_onnx):
    """The unfused (TensorRT) and fused (CPU) graphs of one model agree on the same input."""
    import onnxruntime as ort

    from edgeopt.models.preprocess import Preprocessor

    feeds = Preprocessor(trt_onnx)(["Wireless headphones with long battery life.", "Organic green tea."])
    outs = []
    for art in (trt_onnx, rpi5_onnx):
        sess = ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        outs.append(sess.run(None, {n: feeds[n] for n in names})[0])
    assert outs[0].shape == (2, 3)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-4, rtol=1e-3)


def test_explicit_opset_wins_over_the_target(trt_opset18):
    m = trt_opset18.manifest
    assert m.model.opset == 18 == _default_opset(trt_opset18)
    assert m.model.target == "gpu-server" and m.model.optimization["level"] == "basic"
    assert _domains(trt_opset18) <= STANDARD_DOMAINS
    _assert_numeric_check_passed(trt_opset18)


def test_tensorrt_export_without_optimization(workdir, tiny_text_classifier):
    art = export(tiny_text_classifier, workdir / "gpu-server-noopt", ExportConfig(target="gpu-server", optimize=False))
    assert art.manifest.model.optimization == {"level": "none"}
    assert _domains(art) <= STANDARD_DOMAINS
    assert art.manifest.model.target == "gpu-server"
    _assert_numeric_check_passed(art)


def test_xavier_refuses_an_opset_its_tensorrt_cannot_parse(workdir, tiny_text_classifier):
    out = workdir / "xavier-18"
    with pytest.raises(EdgeoptError) as ei:
        export(tiny_text_classifier, out, ExportConfig(target="jetson-xavier", opset=18))
    msg = str(ei.value)
    assert "jetson-xavier" in msg and "opset 18" in msg and "--opset 17" in msg
    _assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# CPU target: ONNX Runtime's fusions kept
# ---------------------------------------------------------------------------------------------

def test_cpu_target_keeps_onnxruntime_fusions(rpi5_onnx):
    m = rpi5_onnx.manifest
    assert m.model.target == "rpi5"
    assert m.model.opset == 17
    assert m.model.optimization["level"] == "transformer-fusion"
    assert m.model.optimization["fused_ops"].get("Attention") == 2  # two layers
    assert "com.microsoft" in _domains(rpi5_onnx)
    assert unsupported_ops(get_target("rpi5"), rpi5_onnx.path / "model.onnx") == []
    # ...which is exactly what a TensorRT target refuses, naming the fused op and the fix
    problems = unsupported_ops(get_target("gpu-server"), rpi5_onnx.path / "model.onnx")
    assert any("com.microsoft.Attention" in p and "--target gpu-server" in p for p in problems), problems
    _assert_numeric_check_passed(rpi5_onnx)


def test_export_without_target_records_none(cls_onnx):
    m = cls_onnx.manifest
    assert getattr(m.model, "target", None) is None
    assert m.lineage[-1].config.get("target") is None
    assert m.model.optimization["level"] == "transformer-fusion"


# ---------------------------------------------------------------------------------------------
# apply_target: the profile's defaults unless given
# ---------------------------------------------------------------------------------------------

def test_apply_target_resolves_aliases():
    assert apply_target(ExportConfig(target="rpi")).target == "rpi5"
    assert apply_target(ExportConfig(target="jetson")).target == "jetson-orin"
    assert apply_target(ExportConfig()) == ExportConfig()  # no target: unchanged


def test_apply_target_uses_the_profile_unless_given(monkeypatch):
    import edgeopt.targets as targets_mod

    real = get_target("gpu-server")
    fake = real.model_copy(update={"export": real.export.model_copy(update={"opset": 15, "dtype": "float16"})})
    monkeypatch.setattr(targets_mod, "get_target", lambda name=None: fake)
    cfg = apply_target(ExportConfig(target="gpu-server"))
    assert (cfg.opset, cfg.dtype, cfg.target) == (15, "float16", "gpu-server")
    cfg = apply_target(ExportConfig(target="gpu-server", opset=18))
    assert (cfg.opset, cfg.dtype) == (18, "float16")
    cfg = apply_target(ExportConfig(target="gpu-server", dtype="float32", opset=17))  # explicit defaults still win
    assert (cfg.opset, cfg.dtype) == (17, "float32")


def test_unknown_target_fails_before_exporting(workdir, tiny_text_classifier):
    out = workdir / "mars"
    with pytest.raises(TargetError) as ei:
        export(tiny_text_classifier, out, ExportConfig(target="mars"))
    assert "unknown target 'mars'" in str(ei.value) and isinstance(ei.value, ConfigError)
    _assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_export_for_a_target_alias_with_an_explicit_opset(workdir, tiny_text_classifier):
    out = workdir / "cli-jetson"
    proc = cli("export", tiny_text_classifier, "-o", out, "--target", "jetson", "--opset", "18")
    assert proc.returncode == 0, proc.stderr
    assert "exported" in proc.stdout and "optimization: basic" in proc.stdout, proc.stdout
    assert "opset 18 for target jetson-orin" in proc.stdout, proc.stdout
    art = load_artifact(out)
    m = art.manifest
    assert (m.model.target, m.model.opset, m.model.optimization["level"]) == ("jetson-orin", 18, "basic")
    assert _default_opset(art) == 18
    assert _domains(art) <= STANDARD_DOMAINS
    assert unsupported_ops(get_target("jetson-orin"), out / "model.onnx") == []
    _assert_numeric_check_passed(art)


def test_cli_export_unknown_target_is_one_line(workdir, tiny_text_classifier):
    out = workdir / "cli-mars"
    proc = cli("export", tiny_text_classifier, "-o", out, "--target", "mars")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "mars" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    _assert_no_output(out)
