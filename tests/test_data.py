"""Dataset references: .jsonl, .npz and sklearn:digits, with their error messages."""
from __future__ import annotations

import numpy as np
import pytest

from _support import TEXT_ROWS, write_jsonl
from edgeopt.data import load_dataset
from edgeopt.errors import ConfigError, InputError


def test_text_jsonl(text_jsonl):
    ds = load_dataset(text_jsonl, kind="text")
    assert ds.kind == "text"
    assert len(ds) == len(TEXT_ROWS) == 40
    assert ds.samples[0] == TEXT_ROWS[0][0]
    assert ds.labels == [lab for _, lab in TEXT_ROWS]
    idx = ds.label_indices(["a", "b", "c"])
    assert idx.dtype == np.int64
    assert idx.tolist() == [{"a": 0, "b": 1, "c": 2}[lab] for _, lab in TEXT_ROWS]
    small = ds.take(5)
    assert len(small) == 5 and small.labels == ds.labels[:5]
    assert ds.take(None) is ds and ds.take(1000) is ds


def test_unlabelled_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "u.jsonl", [{"text": "one"}, {"text": "two"}])
    ds = load_dataset(p)
    assert ds.labels is None and ds.samples == ["one", "two"]
    with pytest.raises(InputError, match="no 'label' field"):
        ds.label_indices(["a"])


def test_blank_lines_are_skipped(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"text": "x", "label": "a"}\n\n   \n{"text": "y", "label": "b"}\n')
    assert load_dataset(p).samples == ["x", "y"]


def test_image_jsonl(tmp_path):
    rows = [{"image": np.full((4, 4), i, dtype=float).tolist(), "label": i % 2} for i in range(6)]
    ds = load_dataset(write_jsonl(tmp_path / "im.jsonl", rows), kind="image")
    assert ds.kind == "image"
    assert ds.samples.shape == (6, 4, 4) and ds.samples.dtype == np.float32
    assert ds.label_indices(["even", "odd"]).tolist() == [0, 1, 0, 1, 0, 1]


def test_image_jsonl_different_shapes(tmp_path):
    rows = [{"image": [[0, 1], [2, 3]]}, {"image": [[0, 1, 2]]}]
    with pytest.raises(InputError, match="different shapes"):
        load_dataset(write_jsonl(tmp_path / "im.jsonl", rows))


def test_npz(tmp_path):
    imgs = np.random.default_rng(0).uniform(0, 255, size=(5, 6, 6, 3)).astype(np.uint8)
    p = tmp_path / "d.npz"
    np.savez(p, images=imgs, labels=np.array([0, 1, 2, 1, 0]))
    ds = load_dataset(p, kind="image")
    assert ds.samples.shape == (5, 6, 6, 3) and ds.samples.dtype == np.float32
    assert ds.labels == [0, 1, 2, 1, 0]
    np.savez(tmp_path / "nolab.npz", images=imgs)
    assert load_dataset(tmp_path / "nolab.npz").labels is None


def test_npz_without_images(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, pixels=np.zeros((2, 2)))
    with pytest.raises(InputError, match="no 'images' array"):
        load_dataset(p)


def test_corrupt_npz(tmp_path):
    p = tmp_path / "d.npz"
    p.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="cannot read the .npz"):
        load_dataset(p)


def test_sklearn_digits_splits():
    full = load_dataset("sklearn:digits", kind="image")
    splits = {s: load_dataset(f"sklearn:digits:{s}", kind="image") for s in ("train", "validation", "test")}
    n = len(full)
    assert n == 1797
    assert sum(len(d) for d in splits.values()) == n
    assert abs(len(splits["train"]) / n - 0.70) < 0.01
    assert abs(len(splits["validation"]) / n - 0.15) < 0.01
    assert abs(len(splits["test"]) / n - 0.15) < 0.01
    # disjoint: every image of the full set lands in exactly one split
    keys = {s: {d.samples[i].tobytes() + bytes([d.labels[i]]) for i in range(len(d))} for s, d in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert full.samples.shape == (1797, 8, 8)
    # stratified: every class in every split
    for d in splits.values():
        assert set(d.labels) == set(range(10))
    # deterministic
    again = load_dataset("sklearn:digits:test")
    assert np.array_equal(again.samples, splits["test"].samples) and again.labels == splits["test"].labels


@pytest.mark.parametrize("ref,err", [
    ("sklearn:iris", ConfigError),
    ("sklearn:digits:holdout", ConfigError),
    ("sklearn:digits:train:extra", ConfigError),
])
def test_sklearn_bad_refs(ref, err):
    with pytest.raises(err, match="sklearn:digits"):
        load_dataset(ref)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such data file"):
        load_dataset(tmp_path / "nope.jsonl")


def test_unknown_suffix(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n")
    with pytest.raises(InputError, match="unknown data format '.csv'"):
        load_dataset(p)


def test_empty_file(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        load_dataset(p)


def test_kind_mismatch(text_jsonl):
    with pytest.raises(InputError, match="holds text samples but the model takes image input"):
        load_dataset(text_jsonl, kind="image")
    with pytest.raises(InputError, match="holds image samples but the model takes text input"):
        load_dataset("sklearn:digits:test", kind="text")


def test_label_not_in_model_labels(text_jsonl):
    ds = load_dataset(text_jsonl)
    with pytest.raises(InputError, match=r"label 'c' \(row \d+\) is not one of the model's labels \(a, b\)"):
        ds.label_indices(["a", "b"])


def test_integer_labels_map_by_index_and_are_range_checked(tmp_path):
    ds = load_dataset(write_jsonl(tmp_path / "i.jsonl", [{"text": "x", "label": 0}, {"text": "y", "label": 2}]))
    assert ds.label_indices(["a", "b", "c"]).tolist() == [0, 2]
    with pytest.raises(InputError, match=r"label 2 \(row 2\)"):
        ds.label_indices(["a", "b"])
    bools = load_dataset(write_jsonl(tmp_path / "b.jsonl", [{"text": "x", "label": True}]))
    with pytest.raises(InputError, match="label True"):
        bools.label_indices(["a", "b"])


def test_wrong_fields(bad_jsonl):
    with pytest.raises(InputError, match=r"bad\.jsonl:1: no 'text' or 'image' field \(found \['label', 'sentence'\]\)"):
        load_dataset(bad_jsonl)


def test_mixed_labelled_and_unlabelled(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}, {"text": "z"}])
    with pytest.raises(InputError, match="row 3 has no 'label' while others do"):
        load_dataset(p)


def test_mixed_text_and_image_rows(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"text": "x"}, {"image": [[1, 2]]}])
    with pytest.raises(InputError, match=r"m\.jsonl:2: mixes 'image' rows with 'text' rows"):
        load_dataset(p)


def test_text_must_be_string(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, {"text": 42}])
    with pytest.raises(InputError, match=r"t\.jsonl:2: 'text' must be a string, got int"):
        load_dataset(p)


def test_row_must_be_object(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "ok"}\n["text", "x"]\n')
    with pytest.raises(InputError, match=r"a\.jsonl:2: expected a JSON object"):
        load_dataset(p)


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "j.jsonl"
    p.write_text('{"text": "one", "label": "a"}\n{"text": "two", "label": "b"}\n\n{"text": "three", "label": \n')
    with pytest.raises(InputError, match=r"j\.jsonl:4: not valid JSON"):
        load_dataset(p)
