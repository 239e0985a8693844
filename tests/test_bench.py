"""Bench: real subprocess workers measuring torch and ONNX artifacts side by side."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError as PydanticValidationError

from edgeopt.bench.core import BenchConfig, BenchReport, bench
from edgeopt.bench.report import markdown, rows_as_text, write_outputs
from edgeopt.errors import ConfigError, InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def text_report(tiny_text_classifier, cls_onnx, text_jsonl) -> BenchReport:
    return bench([tiny_text_classifier, cls_onnx],
                 BenchConfig(runs=3, warmup=1, batch_sizes=[1, 2], data=str(text_jsonl), threads=1))


def test_rows_per_artifact_and_batch_size(text_report, tiny_text_classifier, cls_onnx):
    rows = text_report.rows
    assert [(r.artifact, r.batch_size) for r in rows] == [
        (tiny_text_classifier.name, 1), (tiny_text_classifier.name, 2), (cls_onnx.path.name, 1), (cls_onnx.path.name, 2)]
    assert [r.format for r in rows] == ["hf", "hf", "onnx", "onnx"]
    assert all(r.precision == "fp32" for r in rows)
    for r in rows:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput > 0
        assert r.size_mb > 0 and r.peak_rss_mb > 0 and r.load_s >= 0
        assert isinstance(r.seq_len, str) and r.seq_len.startswith("~")  # auto: mean padded length


def test_accuracy_and_agreement(text_report):
    rows = text_report.rows
    hf_rows, onnx_rows = rows[:2], rows[2:]
    for r in rows:
        assert r.accuracy is not None and 0 <= r.accuracy <= 1
    assert hf_rows[0].accuracy == onnx_rows[0].accuracy  # the same model in two runtimes
    for r in hf_rows:
        assert r.top1_agreement is None and r.speedup == pytest.approx(1.0)
    for r in onnx_rows:
        assert r.top1_agreement == pytest.approx(1.0)
        assert r.cosine_mean > 0.9999
        assert r.speedup is not None and r.speedup > 0
    assert text_report.data.endswith("text.jsonl")
    assert text_report.threads == 1
    assert text_report.machine["cores"] >= 1 and "onnxruntime" in text_report.machine


def test_sizes_reflect_model_files(text_report, tiny_text_classifier, cls_onnx):
    hf_mb = (tiny_text_classifier / "model.safetensors").stat().st_size / 1e6
    onnx_mb = (cls_onnx.path / "model.onnx").stat().st_size / 1e6
    assert text_report.rows[0].size_mb == pytest.approx(hf_mb)
    assert text_report.rows[2].size_mb == pytest.approx(onnx_mb)


def test_write_outputs(tmp_path, text_report):
    written = write_outputs(text_report, tmp_path / "out" / "r.json", tmp_path / "out" / "r.md", title="my bench")
    assert set(written) == {"json", "report", "plot"}
    data = json.loads(written["json"].read_text())
    assert len(data["rows"]) == 4
    assert BenchReport.model_validate(data) == text_report
    md = written["report"].read_text()
    assert md.startswith("# my bench")
    assert md.count("\n| ") == 1 + 4  # header + one line per row
    assert "![latency vs accuracy](r.png)" in md
    assert written["plot"] == tmp_path / "out" / "r.png"
    png = written["plot"].read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000


def test_write_outputs_json_only(tmp_path, text_report):
    written = write_outputs(text_report, json_path=tmp_path / "r.json")
    assert set(written) == {"json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_markdown_and_text_rows(text_report):
    rows = rows_as_text(text_report)
    assert len(rows) == 4 and all(len(r) == 14 for r in rows)
    assert rows[2][-1] == "100.00%"  # agreement column of the ONNX rows
    assert rows[0][-1] == "-"
    md = markdown(text_report)
    assert "seq_len: auto" in md and "runs: 3 after 1 warm-up" in md


def test_fixed_seq_len_is_reported(cls_onnx, cls_int8_dynamic, text_jsonl):
    rep = bench([cls_onnx, cls_int8_dynamic],
                BenchConfig(runs=2, warmup=0, batch_sizes=[2], seq_len=16, data=str(text_jsonl), eval_samples=12))
    assert [r.seq_len for r in rep.rows] == [16, 16]
    assert [r.precision for r in rep.rows] == ["fp32", "int8"]
    assert rep.rows[1].top1_agreement is not None and rep.rows[1].top1_agreement >= 0.9
    assert rep.rows[1].size_mb < rep.rows[0].size_mb
    assert "seq_len: 16" in markdown(rep)


def test_bench_embeddings_without_data(emb_onnx, tiny_feature_extractor):
    rep = bench([tiny_feature_extractor, emb_onnx], BenchConfig(runs=2, warmup=0, batch_sizes=[4]))
    assert rep.data == "built-in sample sentences"
    assert rep.rows[0].accuracy is None and rep.rows[1].accuracy is None
    assert rep.rows[1].top1_agreement is None  # embeddings: cosine instead
    assert rep.rows[1].cosine_mean > 0.9999


def test_bench_image_models(digits_torch, digits_onnx):
    rep = bench([digits_torch, digits_onnx],
                BenchConfig(runs=2, warmup=1, batch_sizes=[1, 4], data="sklearn:digits:test", eval_samples=50))
    assert len(rep.rows) == 4
    assert [r.format for r in rep.rows] == ["torch", "torch", "onnx", "onnx"]
    assert all(r.seq_len is None for r in rep.rows)
    assert rep.rows[0].accuracy == rep.rows[2].accuracy
    assert rep.rows[2].top1_agreement == pytest.approx(1.0)


def test_mixed_input_kinds_are_rejected(tiny_text_classifier, digits_onnx):
    with pytest.raises(ConfigError, match="different inputs"):
        bench([tiny_text_classifier, digits_onnx], BenchConfig(runs=1))


def test_wrong_data_kind_fails_fast(cls_onnx):
    with pytest.raises(InputError, match="holds image samples"):
        bench([cls_onnx], BenchConfig(runs=1, data="sklearn:digits:test"))


def test_no_artifacts_is_config_error():
    with pytest.raises(ConfigError, match="at least one artifact"):
        bench([], BenchConfig(runs=1))


def test_bench_config_validation():
    with pytest.raises(PydanticValidationError, match="batch sizes must be positive"):
        BenchConfig(batch_sizes=[1, 0])
    with pytest.raises(PydanticValidationError, match="batch sizes must be positive"):
        BenchConfig(batch_sizes=[])
    with pytest.raises(PydanticValidationError, match="seq_len"):
        BenchConfig(seq_len=0)
    with pytest.raises(PydanticValidationError):
        BenchConfig(seq_len="longest")
    with pytest.raises(PydanticValidationError):
        BenchConfig(runs=0)
