"""Fixtures for the compression-stage tests: tiny models (hidden 32), learnable tiny data,
and a real PEFT LoRA adapter. Everything is built locally from seeded random weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from _support import write_jsonl
from stage_helpers import keyword_rows, make_bert_classifier, perturb_adapter


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The machine has 2 cores and other work running: with 2 intra-op threads tiny models spend
    most of their time spinning (a 4-layer, hidden-32 BERT forward goes from ~1 ms to ~40 ms).
    One thread per test process; restored after each module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def stage_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stage-models")


@pytest.fixture(scope="session")
def bert4(stage_models) -> Path:
    """A 4-layer tiny BERT classifier (hidden 32, 4 heads of 8, FFN 64), labels a/b/c."""
    return make_bert_classifier(stage_models / "bert4", layers=4, heads=4, seed=10)


@pytest.fixture(scope="session")
def bert_h48(stage_models) -> Path:
    """Like the shared tiny classifier but hidden 48: a different base for the same adapter."""
    return make_bert_classifier(stage_models / "bert-h48", layers=2, hidden=48, heads=2, seed=11)


# ------------------------------------------------------------------------------------------- data

@pytest.fixture(scope="session")
def stage_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stage-data")


@pytest.fixture(scope="session")
def kw_jsonl(stage_data) -> Path:
    """60 labelled sentences; the class is given by one keyword (learnable by a tiny model)."""
    return write_jsonl(stage_data / "kw.jsonl", keyword_rows(20, seed=0))


@pytest.fixture(scope="session")
def kw_val_jsonl(stage_data) -> Path:
    return write_jsonl(stage_data / "kw-val.jsonl", keyword_rows(6, seed=1))


@pytest.fixture(scope="session")
def unlabelled_jsonl(stage_data) -> Path:
    return write_jsonl(stage_data / "unlabelled.jsonl", [{"text": r["text"]} for r in keyword_rows(4, seed=2)])


def _digits(n: int, offset: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[offset:offset + n].astype(np.float32), d.target[offset:offset + n].astype(np.int64)


@pytest.fixture(scope="session")
def digits_npz(stage_data) -> Path:
    """96 labelled 8x8 digits (0..16 pixel values), as an .npz."""
    images, labels = _digits(96)
    p = stage_data / "digits.npz"
    np.savez(p, images=images, labels=labels)
    return p


@pytest.fixture(scope="session")
def digits_unlabelled_npz(stage_data) -> Path:
    images, _ = _digits(32, offset=200)
    p = stage_data / "digits-unlabelled.npz"
    np.savez(p, images=images)
    return p


# ------------------------------------------------------------------------------------------- PEFT



@pytest.fixture(scope="session")
def lora_adapter(stage_models, tiny_text_classifier) -> Path:
    """A real PEFT LoRA adapter (r=4 on query/value, SEQ_CLS so the classifier is in modules_to_save)
    for the shared tiny classifier, with random B weights and a changed head."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_text_classifier)
    pm = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    perturb_adapter(pm, seed=1)
    d = stage_models / "lora-adapter"
    pm.save_pretrained(d)
    assert (d / "adapter_config.json").is_file()
    return d




@pytest.fixture
def copy_of(tmp_path):
    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copytree(src, dst)
        return dst

    return _copy

