"""Datasets for calibration, accuracy and training.

A dataset reference is one of:
  * ``path/to/file.jsonl`` — one JSON object per line: ``{"text": ..., "label": ...}``
    for text models, ``{"image": [[...]], "label": ...}`` for image models (label optional);
  * ``path/to/file.npz`` — arrays ``images`` (N,H,W[,C]) and optional ``labels``;
  * ``sklearn:digits`` or ``sklearn:digits:train|validation|test`` — scikit-learn's bundled
    8x8 digits images with a fixed stratified 70/15/15 split.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .errors import ConfigError, InputError

SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    kind: str  # "text" | "image"
    samples: Union[list[str], np.ndarray]
    labels: Optional[list] = None  # raw labels (str or int), None when unlabelled
    source: str = ""
    label_names: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def take(self, n: Optional[int]) -> "Dataset":
        if n is None or n >= len(self):
            return self
        return Dataset(self.kind, self.samples[:n], None if self.labels is None else self.labels[:n], self.source, self.label_names)

    def label_indices(self, labels: Optional[Sequence[str]]) -> np.ndarray:
        """Map raw labels onto the model's label list (names or integer ids)."""
        if self.labels is None:
            raise InputError(f"{self.source}: has no 'label' field; accuracy and training need labelled data")
        names = list(labels or [])
        index = {n: i for i, n in enumerate(names)}
        out = np.empty(len(self.labels), dtype=np.int64)
        for i, lab in enumerate(self.labels):
            if isinstance(lab, str) and lab in index:
                out[i] = index[lab]
            elif isinstance(lab, (int, np.integer)) and not isinstance(lab, bool) and (not names or 0 <= int(lab) < len(names)):
                out[i] = int(lab)
            else:
                allowed = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise InputError(f"{self.source}: label {lab!r} (row {i + 1}) is not one of the model's labels ({allowed})")
        return out


def load_dataset(ref: Union[str, Path], kind: Optional[str] = None) -> Dataset:
    """Load a dataset reference; ``kind`` ('text'|'image') checks it fits the model."""
    ref_s = str(ref)
    if ref_s.startswith("sklearn:"):
        ds = _sklearn(ref_s)
    else:
        p = Path(ref_s).expanduser()
        if not p.is_file():
            raise InputError(f"{ref_s}: no such data file; give a .jsonl or .npz file, or sklearn:digits")
        if p.suffix == ".jsonl":
            ds = _jsonl(p)
        elif p.suffix == ".npz":
            ds = _npz(p)
        else:
            raise InputError(f"{ref_s}: unknown data format '{p.suffix}'; use .jsonl (text/image + label per line) or .npz (images, labels)")
    if kind is not None and ds.kind != kind:
        need = "a 'text' field" if kind == "text" else "an 'image' field or .npz images"
        raise InputError(f"{ref_s}: holds {ds.kind} samples but the model takes {kind} input; give data with {need}")
    if len(ds) == 0:
        raise InputError(f"{ref_s}: is empty; give at least one sample")
    return ds


def _jsonl(p: Path) -> Dataset:
    texts, images, labels = [], [], []
    kind = None
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise InputError(f"{p}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from e
            if not isinstance(row, dict):
                raise InputError(f"{p}:{n}: expected a JSON object like {{\"text\": ..., \"label\": ...}}")
            row_kind = "text" if "text" in row else "image" if "image" in row else None
            if row_kind is None:
                raise InputError(f"{p}:{n}: no 'text' or 'image' field (found {sorted(row)}); each row needs one of them, plus 'label' for accuracy")
            if kind is None:
                kind = row_kind
            elif kind != row_kind:
                raise InputError(f"{p}:{n}: mixes '{row_kind}' rows with '{kind}' rows; one dataset holds one kind")
            if row_kind == "text":
                if not isinstance(row["text"], str):
                    raise InputError(f"{p}:{n}: 'text' must be a string, got {type(row['text']).__name__}")
                texts.append(row["text"])
            else:
                images.append(np.asarray(row["image"], dtype=np.float32))
            labels.append(row.get("label"))
    has = [lab is not None for lab in labels]
    if any(has) and not all(has):
        missing = has.index(False) + 1
        raise InputError(f"{p}: row {missing} has no 'label' while others do; label every row or none")
    samples = texts if kind == "text" else _stack(images, p)
    return Dataset(kind or "text", samples, labels if labels and all(has) else None, str(p))


def _stack(images: list, p: Path) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InputError(f"{p}: images have different shapes {sorted(shapes)[:3]}; resize them to one shape")
    return np.stack(images) if images else np.zeros((0,), np.float32)


def _npz(p: Path) -> Dataset:
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{p}: cannot read the .npz file ({e})") from e
    if "images" not in z:
        raise InputError(f"{p}: no 'images' array (found {list(z.keys())}); save with np.savez(path, images=..., labels=...)")
    labels = z["labels"].tolist() if "labels" in z else None
    names = z["label_names"].tolist() if "label_names" in z else None
    return Dataset("image", z["images"].astype(np.float32), labels, str(p), names)


def _sklearn(ref: str) -> Dataset:
    parts = ref.split(":")
    if len(parts) < 2 or parts[1] != "digits" or len(parts) > 3:
        raise ConfigError(f"{ref}: unknown built-in dataset; use sklearn:digits or sklearn:digits:train|validation|test")
    split = parts[2] if len(parts) == 3 else None
    if split is not None and split not in SPLITS:
        raise ConfigError(f"{ref}: unknown split '{split}'; use one of {', '.join(SPLITS)}")
    from ._optional import require

    require("demo", purpose=f"the {ref} dataset", modules=("sklearn",))
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images, labels = d.images.astype(np.float32), d.target.astype(np.int64)
    if split is None:
        return Dataset("image", images, labels.tolist(), ref)
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, test_size=0.3, random_state=0, stratify=labels)
    val, test = train_test_split(rest, test_size=0.5, random_state=0, stratify=labels[rest])
    sel = {"train": train, "validation": val, "test": test}[split]
    return Dataset("image", images[sel], labels[sel].tolist(), ref)
