"""Pruning: unstructured magnitude, structured heads / neurons (BERT) and channels (CNN),
Taylor importance and recovery (edgeopt/stages/prune.py, edgeopt/models/resize.py)."""
from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact
from edgeopt.data import load_dataset
from edgeopt.errors import ConfigError, InputError
from edgeopt.models import load_torch_model
from edgeopt.stages.export import ExportConfig, export
from edgeopt.stages.prune import PruneConfig, prune
from stage_helpers import (artifact_outputs, assert_clean_failure, assert_no_output, cli, linear_zero_fraction,
                           read_manifest, run_capturing_module, run_onnx, torch_outputs)

SENTENCES = [t for t, _ in TEXT_ROWS[:10]]


def _same_outputs_after_reload(art, in_memory, samples):
    from edgeopt.models.preprocess import Preprocessor

    pre = Preprocessor(art)
    ref = torch_outputs(in_memory, pre(samples), pre.input_names)
    got = artifact_outputs(load_artifact(art.path), samples)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    return got


# --- unstructured ---------------------------------------------------------------------------------

def test_unstructured_magnitude(tmp_path, bert4):
    art = prune(bert4, tmp_path / "sparse", PruneConfig(sparsity=0.5))
    m = art.manifest.metrics
    assert m["prune"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "dense kernels" in m["prune"]["note"]
    assert m["before"]["params"] == m["after"]["params"] and m["params_ratio"] == 1.0
    assert linear_zero_fraction(art) == pytest.approx(0.5, abs=0.01)  # the zeros are in the saved weights
    assert not art.manifest.model.resized
    assert art.manifest.lineage[-1].stage == "prune"


def test_unstructured_with_recovery_keeps_the_zeros(tmp_path, bert4, kw_jsonl, kw_val_jsonl):
    art = prune(bert4, tmp_path / "sparse", PruneConfig(sparsity=0.6, data=str(kw_jsonl), recover_steps=3, batch_size=16,
                                                       eval_data=str(kw_val_jsonl), lr=1e-3))
    rec = art.manifest.metrics["prune"]["recovery"]
    assert rec["steps"] == 3
    assert rec["history"] and all(np.isfinite(h["train_loss"]) for h in rec["history"])
    assert rec["history"][0]["epoch"] == 1
    # the masks are re-applied after every optimizer step: recovery does not regrow pruned weights
    assert linear_zero_fraction(art) >= 0.59
    m = art.manifest.metrics
    assert 0 <= m["before"]["accuracy"] <= 1 and 0 <= m["after"]["accuracy"] <= 1
    assert m["accuracy_drop_points"] == pytest.approx((m["before"]["accuracy"] - m["after"]["accuracy"]) * 100)


# --- structured: BERT -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heads_pruned(tmp_path_factory, bert4):
    out = tmp_path_factory.mktemp("prune") / "heads"
    return run_capturing_module(prune, bert4, out, PruneConfig(sparsity=0.5, structured="heads"))


@pytest.fixture(scope="module")
def neurons_pruned(tmp_path_factory, bert4):
    out = tmp_path_factory.mktemp("prune") / "neurons"
    return run_capturing_module(prune, bert4, out, PruneConfig(sparsity=0.5, structured="neurons"))


def test_heads_pruning_shrinks_and_reloads(heads_pruned, bert4):
    art, in_memory = heads_pruned
    m = art.manifest.metrics
    assert m["after"]["params"] < m["before"]["params"] and m["params_ratio"] < 1
    rec = m["prune"]
    assert rec["structured"] == "heads" and rec["heads_per_layer"] == 2
    assert len(rec["removed_heads"]) == 4 and all(len(v) == 2 for v in rec["removed_heads"].values())
    manifest = read_manifest(art.path)
    assert manifest["model"]["resized"] is True and manifest["model"]["attention_heads"] == 2
    reloaded = load_torch_model(load_artifact(art.path))
    q = reloaded.model.bert.encoder.layer[0].attention.self.query
    assert (q.in_features, q.out_features) == (32, 16)  # 2 heads of 8 kept
    assert sum(p.numel() for p in reloaded.parameters()) == m["after"]["params"]
    _same_outputs_after_reload(art, in_memory, SENTENCES)


def test_neurons_pruning_shrinks_and_reloads(neurons_pruned):
    art, in_memory = neurons_pruned
    m = art.manifest.metrics
    assert m["after"]["params"] < m["before"]["params"]
    assert m["prune"] == {"structured": "neurons", "intermediate_size": 32}
    assert json.loads((art.path / "config.json").read_text())["intermediate_size"] == 32
    assert read_manifest(art.path)["model"]["resized"] is True
    _same_outputs_after_reload(art, in_memory, SENTENCES)


@pytest.mark.parametrize("which", ["heads", "neurons"])
def test_structured_bert_exports_to_onnx(tmp_path, heads_pruned, neurons_pruned, which, text_jsonl):
    art, _ = heads_pruned if which == "heads" else neurons_pruned
    onnx_art = export(art, tmp_path / "onnx", ExportConfig(check_data=str(text_jsonl)))
    check = onnx_art.manifest.metrics["numeric_check"]["outputs"]["logits"]
    assert check["within_tolerance"] and check["max_abs_err"] <= 1e-3
    if which == "heads":  # narrower Q/K/V than the hidden size: the attention fusion is skipped
        assert onnx_art.manifest.model.optimization["level"] != "transformer-fusion"
    ref = artifact_outputs(art, SENTENCES)
    np.testing.assert_allclose(run_onnx(onnx_art, SENTENCES), ref, atol=1e-3, rtol=1e-3)


def test_taylor_importance_on_heads(tmp_path, bert4, kw_jsonl):
    art = prune(bert4, tmp_path / "taylor", PruneConfig(sparsity=0.25, structured="heads", importance="taylor",
                                                        data=str(kw_jsonl), batch_size=16, taylor_batches=2))
    rec = art.manifest.metrics["prune"]
    assert rec["heads_per_layer"] == 3
    assert art.manifest.lineage[-1].config["importance"] == "taylor"
    assert art.manifest.metrics["after"]["params"] < art.manifest.metrics["before"]["params"]
    artifact_outputs(load_artifact(art.path), SENTENCES)


def test_recovery_keeps_the_best_validation_epoch(tmp_path, bert4, kw_jsonl, kw_val_jsonl):
    art = prune(bert4, tmp_path / "rec", PruneConfig(sparsity=0.5, structured="neurons", data=str(kw_jsonl),
                                                     val_data=str(kw_val_jsonl), recover_steps=8, batch_size=16, lr=1e-3))
    hist = art.manifest.metrics["prune"]["recovery"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]  # 4 steps an epoch
    assert all(0 <= h["val_accuracy"] <= 1 for h in hist)
    assert art.manifest.lineage[-1].config["val_data"] == str(kw_val_jsonl)


def test_structured_neurons_with_recovery(tmp_path, bert4, kw_jsonl):
    art = prune(bert4, tmp_path / "rec", PruneConfig(sparsity=0.5, structured="neurons", data=str(kw_jsonl),
                                                     recover_steps=2, batch_size=16))
    rec = art.manifest.metrics["prune"]["recovery"]
    assert rec["steps"] == 2 and len(rec["history"]) == 1  # 60 rows / 16 = 4 steps an epoch: stopped in epoch 1
    artifact_outputs(load_artifact(art.path), SENTENCES)


# --- structured: CNN ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def channels_pruned(tmp_path_factory, digits_torch):
    out = tmp_path_factory.mktemp("prune") / "channels"
    return run_capturing_module(prune, digits_torch, out, PruneConfig(sparsity=0.5, structured="channels"))


def test_channels_pruning_shrinks_and_reloads(channels_pruned, digits_npz):
    art, in_memory = channels_pruned
    m = art.manifest.metrics
    assert m["after"]["params"] < m["before"]["params"]
    layers = m["prune"]["layers"]
    assert layers and all(v["kept"] == v["channels"] // 2 for v in layers.values())
    assert read_manifest(art.path)["model"]["resized"] is True
    assert read_manifest(art.path)["model"]["kwargs"] == {"width": 4}  # the factory is unchanged
    images = load_dataset(str(digits_npz)).samples[:16]
    _same_outputs_after_reload(art, in_memory, images)
    reloaded = load_torch_model(load_artifact(art.path))
    assert sum(p.numel() for p in reloaded.parameters()) == m["after"]["params"]


def test_channels_pruned_exports_to_onnx(tmp_path, channels_pruned, digits_npz):
    art, _ = channels_pruned
    onnx_art = export(art, tmp_path / "onnx", ExportConfig(check_data=str(digits_npz)))
    assert onnx_art.manifest.metrics["numeric_check"]["outputs"]["logits"]["within_tolerance"]
    images = load_dataset(str(digits_npz)).samples[:16]
    np.testing.assert_allclose(run_onnx(onnx_art, images), artifact_outputs(art, images), atol=1e-4, rtol=1e-3)


def test_channels_with_taylor_and_recovery(tmp_path, digits_torch, digits_npz):
    art = prune(digits_torch, tmp_path / "ch", PruneConfig(sparsity=0.5, structured="channels", importance="taylor",
                                                           data=str(digits_npz), recover_steps=2, batch_size=32,
                                                           eval_data=str(digits_npz)))
    m = art.manifest.metrics
    assert m["prune"]["recovery"]["steps"] == 2
    assert "accuracy" in m["before"] and "accuracy" in m["after"]
    artifact_outputs(load_artifact(art.path), load_dataset(str(digits_npz)).samples[:4])


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(pydantic.ValidationError, match="sparsity"):
        PruneConfig(sparsity=sparsity)


def test_taylor_and_recovery_need_data():
    with pytest.raises(pydantic.ValidationError, match="labelled data"):
        PruneConfig(sparsity=0.5, importance="taylor")
    with pytest.raises(pydantic.ValidationError, match="labelled data"):
        PruneConfig(sparsity=0.5, recover_steps=5)


def test_data_without_labels(tmp_path, bert4, unlabelled_jsonl):
    with pytest.raises(InputError, match="no labels"):
        prune(bert4, tmp_path / "out", PruneConfig(sparsity=0.5, structured="heads", importance="taylor",
                                                   data=str(unlabelled_jsonl)))
    assert_no_output(tmp_path / "out")


def test_heads_on_a_cnn(tmp_path, digits_torch):
    with pytest.raises(ConfigError, match="channels"):
        prune(digits_torch, tmp_path / "out", PruneConfig(sparsity=0.5, structured="heads"))
    assert_no_output(tmp_path / "out")


def test_neurons_on_a_cnn(tmp_path, digits_torch):
    with pytest.raises(ConfigError):
        prune(digits_torch, tmp_path / "out", PruneConfig(sparsity=0.5, structured="neurons"))
    assert_no_output(tmp_path / "out")


def test_channels_on_a_bert(tmp_path, bert4):
    with pytest.raises(ConfigError, match="heads or neurons"):
        prune(bert4, tmp_path / "out", PruneConfig(sparsity=0.5, structured="channels"))
    assert_no_output(tmp_path / "out")


def test_prune_onnx_artifact_is_refused(tmp_path, cls_onnx):
    with pytest.raises(ConfigError, match="before `edgeopt export`"):
        prune(cls_onnx, tmp_path / "out", PruneConfig(sparsity=0.5))


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_prune_unstructured(tmp_path, tiny_text_classifier):
    out = tmp_path / "sparse"
    proc = cli("prune", tiny_text_classifier, "-o", out, "--sparsity", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "pruned" in proc.stdout and "dense kernels" in proc.stdout and "sparsity 0.30" in proc.stdout
    assert read_manifest(out)["metrics"]["prune"]["sparsity"] == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("sparsity", ["-0.1", "1.0"])
def test_cli_prune_bad_sparsity(tmp_path, tiny_text_classifier, sparsity):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("prune", tiny_text_classifier, "-o", out, "--sparsity", sparsity), out)
    assert "--sparsity" in line


def test_cli_prune_taylor_without_data(tmp_path, tiny_text_classifier):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("prune", tiny_text_classifier, "-o", out, "--sparsity", "0.5",
                                    "--structured", "heads", "--importance", "taylor"), out)
    assert "--data" in line


def test_cli_prune_channels_on_bert(tmp_path, tiny_text_classifier):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("prune", tiny_text_classifier, "-o", out, "--sparsity", "0.5",
                                    "--structured", "channels"), out)
    assert "heads or neurons" in line
