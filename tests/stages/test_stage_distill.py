"""Knowledge distillation (edgeopt/stages/distill.py)."""
from __future__ import annotations

import json
from itertools import product

import numpy as np
import pydantic
import pytest

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact
from edgeopt.data import load_dataset
from edgeopt.errors import ConfigError, InputError
from edgeopt.models import load_torch_model
from edgeopt.stages.distill import DistillConfig, distill, keep_layers
from edgeopt.stages.export import ExportConfig, export
from stage_helpers import artifact_outputs, assert_clean_failure, assert_no_output, cli, read_manifest, run_onnx

SENTENCES = [t for t, _ in TEXT_ROWS[:10]]


def test_keep_layers_example():
    assert keep_layers(6, 3) == [1, 3, 5]
    assert keep_layers(4, 2) == [1, 3]
    assert keep_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert keep_layers(5, 5) == [0, 1, 2, 3, 4]
    assert keep_layers(7, 1) == [6]


def test_keep_layers_properties():
    for n_t, n_s in product(range(1, 25), range(1, 25)):
        if n_s > n_t:
            continue
        ks = keep_layers(n_t, n_s)
        assert len(ks) == n_s, (n_t, n_s, ks)
        assert ks[-1] == n_t - 1, (n_t, n_s, ks)  # always ends at the top layer
        assert ks[0] >= 0 and all(a < b for a, b in zip(ks, ks[1:])), (n_t, n_s, ks)  # distinct, in order


@pytest.fixture(scope="module")
def bert_student(tmp_path_factory, bert4, kw_jsonl, kw_val_jsonl):
    out = tmp_path_factory.mktemp("distill") / "student"
    cfg = DistillConfig(data=str(kw_jsonl), val_data=str(kw_val_jsonl), eval_data=str(kw_val_jsonl), student_layers=2,
                        epochs=2, batch_size=16, lr=1e-3)
    return distill(bert4, out, cfg)


def test_student_layers(bert_student):
    art = bert_student
    cfg = json.loads((art.path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 32
    m = art.manifest.metrics
    assert m["layer_map"] == [1, 3]
    assert m["teacher"]["params"] > m["student"]["params"] > 0
    assert 0 <= m["teacher"]["accuracy"] <= 1 and 0 <= m["student"]["accuracy"] <= 1
    assert m["accuracy_retained"] == pytest.approx(m["student"]["accuracy"] / max(m["teacher"]["accuracy"], 1e-9))
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_accuracy"] <= 1 for h in m["history"])
    best = max(m["history"], key=lambda h: h["val_accuracy"])
    assert m["best_epoch"] == best["epoch"] and m["val_accuracy"] == best["val_accuracy"]
    assert m["world_size"] == 1
    assert art.manifest.lineage[-1].stage == "distill"
    assert art.manifest.labels == ["a", "b", "c"]


def test_student_reloads_and_exports(tmp_path, bert_student, kw_jsonl):
    art = load_artifact(bert_student.path)
    module = load_torch_model(art)
    assert len(module.model.bert.encoder.layer) == 2
    onnx_art = export(art, tmp_path / "onnx", ExportConfig(check_data=str(kw_jsonl)))
    assert onnx_art.manifest.metrics["numeric_check"]["outputs"]["logits"]["within_tolerance"]
    np.testing.assert_allclose(run_onnx(onnx_art, SENTENCES), artifact_outputs(art, SENTENCES), atol=1e-3, rtol=1e-3)


def test_student_starts_from_the_kept_teacher_layers(tmp_path, bert4, kw_jsonl):
    """With a vanishing learning rate the student is the teacher's layers 1 and 3, unchanged."""
    from safetensors.torch import load_file

    art = distill(bert4, tmp_path / "s", DistillConfig(data=str(kw_jsonl), student_layers=2, epochs=1, batch_size=32,
                                                       lr=1e-12))
    t = load_file(bert4 / "model.safetensors")
    s = load_file(art.path / "model.safetensors")
    for s_i, t_i in enumerate([1, 3]):
        for name in ("attention.self.query.weight", "intermediate.dense.weight", "output.LayerNorm.bias"):
            np.testing.assert_allclose(s[f"bert.encoder.layer.{s_i}.{name}"].numpy(),
                                       t[f"bert.encoder.layer.{t_i}.{name}"].numpy(), atol=1e-6)


def test_hidden_loss(tmp_path, bert4, kw_jsonl):
    base = dict(data=str(kw_jsonl), student_layers=2, epochs=1, batch_size=32, lr=1e-8)
    plain = distill(bert4, tmp_path / "plain", DistillConfig(**base))
    hidden = distill(bert4, tmp_path / "hidden", DistillConfig(**base, hidden_loss=True, hidden_weight=10.0))
    assert hidden.manifest.lineage[-1].config["hidden_loss"] is True
    lp, lh = plain.manifest.metrics["history"][0]["train_loss"], hidden.manifest.metrics["history"][0]["train_loss"]
    # the student's layer 0 output feeds its layer 1 (teacher layer 3 sees teacher layer 2): the MSE term is > 0
    assert np.isfinite(lh) and lh > lp
    artifact_outputs(load_artifact(hidden.path), SENTENCES)


def test_grad_accum_in_distill(tmp_path, bert4, kw_jsonl):
    art = distill(bert4, tmp_path / "s", DistillConfig(data=str(kw_jsonl), student_layers=1, epochs=1, batch_size=8,
                                                       grad_accum=3))
    assert art.manifest.metrics["layer_map"] == [3]
    assert np.isfinite(art.manifest.metrics["history"][0]["train_loss"])


def test_cnn_student_width(tmp_path, digits_torch, digits_npz):
    art = distill(digits_torch, tmp_path / "small", DistillConfig(data=str(digits_npz), student='{"width": 2}', epochs=1,
                                                                  batch_size=32, eval_data=str(digits_npz)))
    m = art.manifest
    assert m.format == "torch" and m.model.kwargs == {"width": 2}
    assert m.metrics["student"]["params"] < m.metrics["teacher"]["params"]
    assert m.metrics["layer_map"] == []
    images = load_dataset(str(digits_npz)).samples[:8]
    module = load_torch_model(load_artifact(art.path))
    assert module.features[0].out_channels == 2
    out = artifact_outputs(load_artifact(art.path), images)
    assert out.shape == (8, 10)
    onnx_art = export(art, tmp_path / "onnx", ExportConfig(check_data=str(digits_npz)))
    np.testing.assert_allclose(run_onnx(onnx_art, images), out, atol=1e-4, rtol=1e-3)


# --- errors ---------------------------------------------------------------------------------------

def test_student_layers_larger_than_teacher(tmp_path, bert4, kw_jsonl):
    with pytest.raises(ConfigError, match="only 4 layers"):
        distill(bert4, tmp_path / "out", DistillConfig(data=str(kw_jsonl), student_layers=5, epochs=1))
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("kw", [{}, {"student_layers": 2, "student": '{"width": 2}'}])
def test_exactly_one_student(kw):
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        DistillConfig(data="x.jsonl", **kw)


def test_data_without_labels(tmp_path, bert4, unlabelled_jsonl):
    with pytest.raises(InputError, match="no labels"):
        distill(bert4, tmp_path / "out", DistillConfig(data=str(unlabelled_jsonl), student_layers=2, epochs=1))
    assert_no_output(tmp_path / "out")


def test_cnn_student_must_be_json(tmp_path, digits_torch, digits_npz):
    with pytest.raises(ConfigError, match="JSON"):
        distill(digits_torch, tmp_path / "out", DistillConfig(data=str(digits_npz), student="width=2", epochs=1))
    assert_no_output(tmp_path / "out")


def test_hf_student_config_with_other_vocab(tmp_path, bert4, kw_jsonl):
    from transformers import BertConfig

    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "student-cfg")
    with pytest.raises(ConfigError, match="vocabulary"):
        distill(bert4, tmp_path / "out", DistillConfig(data=str(kw_jsonl), student=str(tmp_path / "student-cfg"), epochs=1))


def test_hidden_loss_needs_the_teachers_width(tmp_path, bert4, kw_jsonl):
    from transformers import BertConfig

    vocab = json.loads((bert4 / "config.json").read_text())["vocab_size"]
    BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path / "student-cfg")
    with pytest.raises(ConfigError, match="hidden size"):
        distill(bert4, tmp_path / "out", DistillConfig(data=str(kw_jsonl), student=str(tmp_path / "student-cfg"),
                                                       hidden_loss=True, epochs=1))
    assert_no_output(tmp_path / "out")


def test_teacher_must_be_a_classifier(tmp_path, tiny_feature_extractor, kw_jsonl):
    with pytest.raises(ConfigError, match="needs a classifier"):
        distill(tiny_feature_extractor, tmp_path / "out", DistillConfig(data=str(kw_jsonl), student_layers=1, epochs=1))


def test_hf_student_config(tmp_path, bert4, kw_jsonl):
    """A given (narrower) student config: trained from scratch, keeps the teacher's labels."""
    from transformers import BertConfig

    teacher_cfg = json.loads((bert4 / "config.json").read_text())
    BertConfig(vocab_size=teacher_cfg["vocab_size"], hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=128).save_pretrained(tmp_path / "student-cfg")
    art = distill(bert4, tmp_path / "s", DistillConfig(data=str(kw_jsonl), student=str(tmp_path / "student-cfg"), epochs=1,
                                                       batch_size=32))
    cfg = json.loads((art.path / "config.json").read_text())
    assert cfg["hidden_size"] == 16 and cfg["num_hidden_layers"] == 1
    assert cfg["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert art.manifest.metrics["layer_map"] == [3]
    assert artifact_outputs(load_artifact(art.path), SENTENCES).shape == (len(SENTENCES), 3)


def test_cli_distill_both_students(tmp_path, bert4, kw_jsonl):
    out = tmp_path / "out"
    line = assert_clean_failure(cli("distill", bert4, "-o", out, "--data", kw_jsonl, "--student-layers", "2",
                                    "--student", '{"width": 2}'), out)
    assert "exactly one" in line


def test_cli_distill(tmp_path, bert4, kw_jsonl):
    out = tmp_path / "student"
    proc = cli("distill", bert4, "-o", out, "--data", kw_jsonl, "--student-layers", "2", "--epochs", "1",
               "--batch-size", "32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("distilled") == 1 and "params" in proc.stdout
    assert read_manifest(out)["metrics"]["layer_map"] == [1, 3]
