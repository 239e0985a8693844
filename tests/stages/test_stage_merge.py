"""Merging a real PEFT adapter into the base checkpoint (edgeopt/stages/merge.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

from _support import TEXT_ROWS
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError, InputError
from edgeopt.stages.merge import MergeConfig, merge
from stage_helpers import assert_clean_failure, assert_no_output, cli, load_peft, perturb_adapter, read_manifest

SENTENCES = [t for t, _ in TEXT_ROWS[:12]]


def _logits(model, folder, texts=SENTENCES) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy()


def _plain_hf(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def merged_lora(tmp_path_factory, tiny_text_classifier, lora_adapter):
    out = tmp_path_factory.mktemp("merge") / "merged"
    return merge(tiny_text_classifier, out, MergeConfig(adapter=str(lora_adapter)))


def test_merged_lora_equals_peft_model(merged_lora, tiny_text_classifier, lora_adapter):
    peft_model = load_peft(tiny_text_classifier, lora_adapter)
    ref = _logits(peft_model, tiny_text_classifier)
    base = _logits(_plain_hf(tiny_text_classifier), tiny_text_classifier)
    assert np.abs(ref - base).max() > 1e-2, "the test adapter should change the model's outputs"

    got = _logits(_plain_hf(merged_lora.path), merged_lora.path)  # plain transformers, no PeftModel
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    m = read_manifest(merged_lora.path)
    check = m["metrics"]["numeric_check"]
    assert check["against"] == "peft model" and check["samples"] >= 1
    assert check["outputs"]["logits"]["max_abs_err"] < 1e-4
    assert m["format"] == "hf" and m["task"] == "text-classification"
    assert m["lineage"][-1]["stage"] == "merge"
    assert m["lineage"][-1]["config"]["adapter_config"]["peft_type"] == "LORA"
    assert m["metrics"]["adapter_params"] > 0
    load_artifact(merged_lora.path)  # sha256 of every file verifies


def test_merged_checkpoint_has_no_adapter_weights(merged_lora):
    files = {p.name for p in merged_lora.path.iterdir()}
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    with safe_open(merged_lora.path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora_" in k or "modules_to_save" in k or k.startswith("base_model.model.")]


def test_merged_checkpoint_loads_without_peft(merged_lora, tiny_text_classifier, lora_adapter):
    """A fresh interpreter in which `import peft` fails loads the merged folder with transformers alone."""
    code = (
        "import sys, json\n"
        "sys.modules['peft'] = None  # any import of peft now raises ImportError\n"
        "import torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"p = {str(merged_lora.path)!r}\n"
        "m = AutoModelForSequenceClassification.from_pretrained(p).eval()\n"
        "tok = AutoTokenizer.from_pretrained(p)\n"
        f"enc = tok({SENTENCES!r}, padding=True, truncation=True, return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(m(**enc).logits.tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = _logits(load_peft(tiny_text_classifier, lora_adapter), tiny_text_classifier)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_merged_keeps_base_labels_when_adapter_has_none(merged_lora):
    assert merged_lora.manifest.labels == ["a", "b", "c"]
    assert _plain_hf(merged_lora.path).config.id2label == {0: "a", 1: "b", 2: "c"}


def _peft_config(kind: str):
    from peft import IA3Config, LoHaConfig, TaskType

    if kind == "loha":
        return LoHaConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"])
    return IA3Config(task_type=TaskType.SEQ_CLS, target_modules=["key", "value", "intermediate.dense"],
                     feedforward_modules=["intermediate.dense"])


@pytest.mark.parametrize("kind,peft_type", [("loha", "LOHA"), ("ia3", "IA3")])
def test_merge_other_mergeable_adapters(tmp_path, tiny_text_classifier, kind, peft_type):
    from peft import get_peft_model

    pm = get_peft_model(_plain_hf(tiny_text_classifier), _peft_config(kind))
    perturb_adapter(pm, seed=2)
    adapter = tmp_path / f"{kind}-adapter"
    pm.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == peft_type

    art = merge(tiny_text_classifier, tmp_path / "merged", MergeConfig(adapter=str(adapter)))
    ref = _logits(load_peft(tiny_text_classifier, adapter), tiny_text_classifier)
    assert np.abs(ref - _logits(_plain_hf(tiny_text_classifier), tiny_text_classifier)).max() > 1e-3
    np.testing.assert_allclose(_logits(_plain_hf(art.path), art.path), ref, atol=1e-4, rtol=0)
    assert art.manifest.metrics["numeric_check"]["outputs"]["logits"]["max_abs_err"] < 1e-4


def test_merge_with_check_data(tmp_path, tiny_text_classifier, lora_adapter, text_jsonl):
    art = merge(tiny_text_classifier, tmp_path / "merged", MergeConfig(adapter=str(lora_adapter), check_data=str(text_jsonl),
                                                                       check_samples=10))
    check = art.manifest.metrics["numeric_check"]
    assert check["samples"] == 10 and check["data"] == str(text_jsonl)


# --- errors -----------------------------------------------------------------------------------------

def test_missing_adapter_config(tmp_path, tiny_text_classifier, lora_adapter, copy_of):
    adapter = copy_of(lora_adapter, "no-config")
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(InputError, match="adapter_config.json"):
        merge(tiny_text_classifier, tmp_path / "out", MergeConfig(adapter=str(adapter)))
    assert_no_output(tmp_path / "out")


def test_missing_adapter_folder(tmp_path, tiny_text_classifier):
    with pytest.raises(InputError, match="no such adapter"):
        merge(tiny_text_classifier, tmp_path / "out", MergeConfig(adapter=str(tmp_path / "nope")))


def test_prompt_tuning_adapter_is_not_mergeable(tmp_path, tiny_text_classifier):
    adapter = tmp_path / "prompt"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 8,
        "base_model_name_or_path": str(tiny_text_classifier)}))
    with pytest.raises(ConfigError, match="PROMPT_TUNING") as e:
        merge(tiny_text_classifier, tmp_path / "out", MergeConfig(adapter=str(adapter)))
    assert "LORA" in str(e.value)  # the message lists what can be merged
    assert_no_output(tmp_path / "out")


def test_adapter_for_another_base(tmp_path, bert_h48, lora_adapter):
    """The adapter was trained on a hidden-32 BERT; the base has hidden 48."""
    with pytest.raises(ConfigError) as e:
        merge(bert_h48, tmp_path / "out", MergeConfig(adapter=str(lora_adapter)))
    msg = str(e.value)
    assert "another base" in msg
    assert "bert.encoder.layer.0.attention.self.query" in msg
    assert "32" in msg and "48" in msg
    assert_no_output(tmp_path / "out")


def test_quantized_base_is_refused(tmp_path, tiny_text_classifier, lora_adapter, copy_of):
    base = copy_of(tiny_text_classifier, "quantized-base")
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="quantized") as e:
        merge(base, tmp_path / "out", MergeConfig(adapter=str(lora_adapter)))
    assert "bitsandbytes" in str(e.value)
    assert_no_output(tmp_path / "out")


def test_merge_into_onnx_artifact_is_refused(tmp_path, cls_onnx, lora_adapter):
    with pytest.raises(ConfigError, match="format onnx"):
        merge(cls_onnx, tmp_path / "out", MergeConfig(adapter=str(lora_adapter)))


# --- CLI --------------------------------------------------------------------------------------------

def test_cli_merge(tmp_path, tiny_text_classifier, lora_adapter):
    out = tmp_path / "merged"
    proc = cli("merge", tiny_text_classifier, "--adapter", lora_adapter, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "merged" in proc.stdout and "logits max abs diff" in proc.stdout
    m = read_manifest(out)
    assert m["metrics"]["numeric_check"]["outputs"]["logits"]["max_abs_err"] < 1e-4
    ref = _logits(load_peft(tiny_text_classifier, lora_adapter), tiny_text_classifier)
    np.testing.assert_allclose(_logits(_plain_hf(out), out), ref, atol=1e-4, rtol=0)


def test_cli_merge_adapter_for_another_base(tmp_path, bert_h48, lora_adapter):
    out = tmp_path / "merged"
    line = assert_clean_failure(cli("merge", bert_h48, "--adapter", lora_adapter, "-o", out), out, codes=(2,))
    assert "another base" in line


def test_cli_merge_missing_adapter_config(tmp_path, tiny_text_classifier):
    adapter = tmp_path / "empty-adapter"
    adapter.mkdir()
    out = tmp_path / "merged"
    line = assert_clean_failure(cli("merge", tiny_text_classifier, "--adapter", adapter, "-o", out), out, codes=(2,))
    assert "adapter_config.json" in line


def test_merge_feature_extraction_adapter(tmp_path, tiny_feature_extractor):
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    pm = get_peft_model(AutoModel.from_pretrained(tiny_feature_extractor),
                        LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=4, target_modules=["query", "value"]))
    perturb_adapter(pm, seed=3)
    adapter = tmp_path / "fe-adapter"
    pm.save_pretrained(adapter)
    art = merge(tiny_feature_extractor, tmp_path / "merged", MergeConfig(adapter=str(adapter)))
    assert art.manifest.task == "feature-extraction" and art.manifest.io.outputs[0].name == "embeddings"
    assert art.manifest.metrics["numeric_check"]["outputs"]["embeddings"]["max_abs_err"] < 1e-4
    tok = AutoTokenizer.from_pretrained(art.path)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    pm.eval()
    with torch.no_grad():
        ref = pm(**enc).last_hidden_state
        got = AutoModel.from_pretrained(art.path).eval()(**enc).last_hidden_state
        base = AutoModel.from_pretrained(tiny_feature_extractor).eval()(**enc).last_hidden_state
    assert (ref - base).abs().max() > 1e-2
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_merge_adapter_with_a_new_label_set(tmp_path, tiny_text_classifier):
    """An adapter trained with a new 2-label head on the 3-label base: the head is in the adapter."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from edgeopt.errors import EdgeoptError

    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_text_classifier, num_labels=2, id2label={0: "x", 1: "y"}, label2id={"x": 0, "y": 1}, ignore_mismatched_sizes=True)
    pm = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    perturb_adapter(pm, seed=4)
    adapter = tmp_path / "two-label-adapter"
    pm.save_pretrained(adapter)
    (adapter / "labels.json").write_text(json.dumps(["x", "y"]))
    try:
        art = merge(tiny_text_classifier, tmp_path / "merged", MergeConfig(adapter=str(adapter)))
    except EdgeoptError:
        return  # a clear, typed error would be acceptable too
    assert art.manifest.labels == ["x", "y"]
    np.testing.assert_allclose(_logits(_plain_hf(art.path), art.path), _logits(pm.eval(), tiny_text_classifier), atol=1e-4)
