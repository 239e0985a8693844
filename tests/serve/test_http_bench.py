"""`edgeopt bench --url`: the HTTP load generator against a live `edgeopt serve`."""
from __future__ import annotations

import subprocess

from serve_helpers import EDGEOPT_BIN, free_port, metric_value


def test_load_test_reports_one_row(cls_server, labelled_jsonl):
    from edgeopt.bench.http import LoadConfig, load_test

    before = cls_server.metrics()
    rep = load_test(LoadConfig(url=cls_server.url, concurrency=4, requests=40, data=str(labelled_jsonl)))
    after = cls_server.metrics()
    (row,) = rep.rows
    assert row.requests == 40
    assert row.errors == 0
    assert row.status_counts == {"200": 40}
    assert row.concurrency == 4
    assert row.format == "http"
    assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
    assert row.throughput > 0
    assert row.accuracy is not None and 0.0 <= row.accuracy <= 1.0
    assert rep.data == str(labelled_jsonl)
    # the server saw the warm-up requests plus exactly the 40 timed ones
    ok = {"route": "/v1/predict", "method": "POST", "status": "200"}
    assert metric_value(after, "edgeopt_requests_total", ok) - metric_value(before, "edgeopt_requests_total", ok) == 40 + 4


def test_load_test_with_api_key(serve_cls_onnx, monkeypatch):
    import pytest

    from edgeopt.bench.http import LoadConfig, load_test
    from edgeopt.errors import ConfigError
    from serve_helpers import live_server

    monkeypatch.setenv("EDGEOPT_BENCH_KEY", "k-123")
    with live_server(serve_cls_onnx, api_key_env="EDGEOPT_BENCH_KEY") as srv:
        rep = load_test(LoadConfig(url=srv.url, concurrency=2, requests=6, api_key_env="EDGEOPT_BENCH_KEY", warmup=0))
        assert rep.rows[0].errors == 0 and rep.rows[0].accuracy is None  # unlabelled built-in sentences
        monkeypatch.delenv("EDGEOPT_BENCH_KEY")
        with pytest.raises(ConfigError, match="EDGEOPT_BENCH_KEY"):
            load_test(LoadConfig(url=srv.url, requests=2, api_key_env="EDGEOPT_BENCH_KEY"))


def test_cli_bench_url_prints_the_table(cls_server):
    p = subprocess.run([EDGEOPT_BIN, "bench", "--url", cls_server.url, "--requests", "20", "--concurrency", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "edgeopt bench" in out and "bert-cls" in out  # the artifact column may be squeezed with an ellipsis
    for header in ("p50 ms", "p90 ms", "p99 ms", "items/s", "concurrency", "requests", "errors"):
        assert header in out, out
    row = next(ln for ln in out.splitlines() if "bert-cls" in ln)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[1] == "http" and cells[-3:] == ["2", "20", "0"], cells  # concurrency, requests, errors
    assert "Traceback" not in p.stderr


def test_cli_bench_url_closed_port_is_one_error_line():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    p = subprocess.run([EDGEOPT_BIN, "bench", "--url", url, "--requests", "5"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error:") and url in lines[0]
    assert "Traceback" not in p.stderr + p.stdout


def test_cli_bench_url_and_artifacts_is_a_usage_error(cls_server, serve_cls_onnx):
    p = subprocess.run([EDGEOPT_BIN, "bench", str(serve_cls_onnx.path), "--url", cls_server.url], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("error:") and "Traceback" not in p.stderr
