"""`edgeopt sensitivity`: quantize one node at a time and rank nodes by the fidelity each costs."""
from __future__ import annotations

import json

import onnx
import pytest

from edgeopt.errors import ConfigError
from edgeopt.sensitivity import SensitivityConfig, sensitivity
from edgeopt.stages.quantize import QuantizeConfig, quantize
from test_cli import assert_clean_failure, cli


def _quantizable(art) -> set[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return {n.name for n in onnx.load(str(art.path / "model.onnx")).graph.node if n.op_type in IntegerOpsRegistry}


def test_every_quantizable_node_ranked_most_sensitive_first(cls_onnx, text_jsonl, tmp_path):
    import tempfile
    from pathlib import Path

    tmp_root = Path(tempfile.gettempdir())
    before = sorted(cls_onnx.path.rglob("*")), set(tmp_root.glob("edgeopt-sensitivity-*"))
    res = sensitivity(cls_onnx, SensitivityConfig(data=str(text_jsonl), samples=16))
    # nothing written next to the artifact, and its private folder is gone
    assert (sorted(cls_onnx.path.rglob("*")), set(tmp_root.glob("edgeopt-sensitivity-*"))) == before
    names = [r.node for r in res.nodes]
    assert sorted(names) == sorted(_quantizable(cls_onnx)) and len(set(names)) == len(names)
    errors = [r.error for r in res.nodes]
    assert errors == sorted(errors, reverse=True)
    assert all(0 <= r.error < 1 and -1 <= r.cosine_min <= 1 and r.top1_agreement is not None for r in res.nodes)
    assert res.samples == 16 and res.data == str(text_jsonl) and res.target == "x86"
    # quantizing everything at once costs at least what the worst single node costs, and it matches
    # what the quantize stage records for the same data
    assert res.full.error >= res.nodes[0].error - 1e-6
    q = quantize(cls_onnx, tmp_path / "q", QuantizeConfig(ptq="dynamic", eval_data=str(text_jsonl), eval_samples=16))
    assert abs((1 - q.manifest.metrics["eval"]["cosine_mean"]) - res.full.error) < 1e-6


def test_cli_table_and_json(emb_onnx):
    r = cli("sensitivity", emb_onnx.path, "--samples", "8", "--top", "2")
    assert r.returncode == 0, r.stderr
    assert "1 - cosine mean" in r.stdout and "all of them" in r.stdout and "--exclude-nodes" in r.stdout
    r = cli("sensitivity", emb_onnx.path, "--samples", "8", "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert len(body["nodes"]) == len(_quantizable(emb_onnx)) and body["full"]["node"] == "*"
    assert all(n["top1_agreement"] is None for n in body["nodes"])  # an embedder has no classes


@pytest.mark.parametrize("fixture", ["cls_int8_dynamic", "tiny_text_classifier"])
def test_not_an_fp32_onnx_artifact_is_one_line(request, fixture):
    art = request.getfixturevalue(fixture)
    path = getattr(art, "path", art)
    with pytest.raises(ConfigError):
        sensitivity(path)
    assert_clean_failure(cli("sensitivity", path), codes=(2,))


def test_tensorrt_target_is_refused(emb_onnx):
    with pytest.raises(ConfigError, match="TensorRT"):
        sensitivity(emb_onnx, SensitivityConfig(target="gpu-server"))
