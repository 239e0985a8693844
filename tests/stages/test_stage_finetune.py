"""Fine-tuning a text classifier with LoRA (edgeopt/stages/finetune.py), and merging its adapter back."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError
from edgeopt.stages.finetune import FinetuneConfig, LoraSettings, finetune
from edgeopt.stages.merge import MergeConfig, merge
from stage_helpers import artifact_outputs, keyword_rows

SENTENCES = [t for t, _ in TEXT_ROWS[:8]] + [r["text"] for r in keyword_rows(2, seed=5)]


@pytest.fixture(scope="module")
def lora_finetuned(tmp_path_factory, bert4, kw_jsonl, kw_val_jsonl):
    out = tmp_path_factory.mktemp("finetune") / "trained"
    # default LoRA targets (query, key, value and every dense layer); the classifier is in modules_to_save
    cfg = FinetuneConfig(train_data=str(kw_jsonl), val_data=str(kw_val_jsonl), test_data=str(kw_val_jsonl), epochs=12,
                         batch_size=8, lr=1e-2, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    return finetune(bert4, out, cfg)


def test_lora_finetune_learns(lora_finetuned):
    m = lora_finetuned.manifest.metrics
    losses = [h["train_loss"] for h in m["history"]]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0]  # (seeds 0-4 all end below 0.65 from 1.10)
    assert m["val_accuracy"] == max(h["val_accuracy"] for h in m["history"])
    assert m["best_epoch"] == max(m["history"], key=lambda h: h["val_accuracy"])["epoch"]
    assert m["val_accuracy"] > 0.5  # chance is 1/3: the keyword task is (at least partly) learnt
    assert 0 <= m["test_accuracy"] <= 1
    assert lora_finetuned.manifest.labels == ["a", "b", "c"]


def test_lora_finetune_artifact_layout(lora_finetuned, bert4):
    art = load_artifact(lora_finetuned.path)  # every file, adapter included, verifies
    assert art.manifest.model.adapter == "adapter"
    assert "adapter/adapter_config.json" in art.manifest.files
    acfg = json.loads((art.path / "adapter" / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(bert4) and acfg["peft_type"] == "LORA"
    assert json.loads((art.path / "adapter" / "labels.json").read_text()) == ["a", "b", "c"]
    with safe_open(art.path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora_" in k or "modules_to_save" in k]  # merged weights, loads without peft
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(art.path)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_merging_the_adapter_reproduces_the_finetuned_model(tmp_path, lora_finetuned, bert4):
    merged = merge(bert4, tmp_path / "merged", MergeConfig(adapter=str(lora_finetuned.path / "adapter")))
    assert merged.manifest.labels == ["a", "b", "c"]
    np.testing.assert_allclose(artifact_outputs(merged, SENTENCES), artifact_outputs(lora_finetuned, SENTENCES),
                               atol=1e-4, rtol=0)
    assert merged.manifest.metrics["numeric_check"]["outputs"]["logits"]["max_abs_err"] < 1e-4


def test_merge_reads_labels_from_the_enclosing_finetune_artifact(tmp_path, lora_finetuned, bert4):
    copy = tmp_path / "trained-copy"
    shutil.copytree(lora_finetuned.path, copy)
    (copy / "adapter" / "labels.json").unlink()
    merged = merge(bert4, tmp_path / "merged", MergeConfig(adapter=str(copy / "adapter")))
    assert merged.manifest.labels == ["a", "b", "c"]


def test_full_finetune_has_no_adapter(tmp_path, tiny_text_classifier, kw_jsonl):
    art = finetune(tiny_text_classifier, tmp_path / "full", FinetuneConfig(train_data=str(kw_jsonl), epochs=1, batch_size=32))
    assert art.manifest.model.adapter is None and not (art.path / "adapter").exists()
    assert art.manifest.lineage[-1].stage == "finetune"


def test_finetune_needs_a_text_hf_model(tmp_path, digits_torch, kw_jsonl):
    with pytest.raises(ConfigError, match="Hugging Face text model"):
        finetune(digits_torch, tmp_path / "out", FinetuneConfig(train_data=str(kw_jsonl), epochs=1))


def test_finetune_classifier_base_on_a_new_label_set(tmp_path, tiny_text_classifier):
    from _support import write_jsonl

    from edgeopt.errors import EdgeoptError

    rows = [{"text": f"apple {w}", "label": "x"} for w in ("one", "two", "three", "four")]
    rows += [{"text": f"river {w}", "label": "y"} for w in ("one", "two", "three", "four")]
    data = write_jsonl(tmp_path / "two.jsonl", rows)
    try:
        art = finetune(tiny_text_classifier, tmp_path / "out", FinetuneConfig(train_data=str(data), epochs=1, batch_size=8,
                                                                              lora=LoraSettings(r=4)))
    except EdgeoptError:
        return  # a clear, typed error would be acceptable too
    assert art.manifest.labels == ["x", "y"]
    assert artifact_outputs(art, ["apple one"]).shape == (1, 2)


def test_merge_refuses_a_base_that_already_holds_the_adapter(tmp_path, lora_finetuned):
    from edgeopt.errors import ConfigError as _ConfigError

    out = tmp_path / "double"
    try:
        art = merge(lora_finetuned.path, out, MergeConfig(adapter=str(lora_finetuned.path / "adapter")))
    except _ConfigError:
        return
    # if it is accepted, it must at least not change the (already merged) model
    np.testing.assert_allclose(artifact_outputs(art, SENTENCES), artifact_outputs(lora_finetuned, SENTENCES), atol=1e-4)
