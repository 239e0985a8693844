"""`edgeopt serve` under load and abuse (issue #11), each against a real uvicorn server: bounded work
per batch, dropped work of callers that timed out or went away, a lone client that does not wait
for company, multi-worker metrics and readiness, request ids and logs, and the HTTP details."""
from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time

import httpx
import numpy as np
import pytest

from serve_helpers import (
    LONG_TEXT,
    TEXTS,
    assert_error_body,
    check_prediction,
    live_server,
    metric_value,
    start_cli_server,
)

CLS_LABELS = ["a", "b", "c"]
PREDICT_OK = {"route": "/v1/predict", "method": "POST", "status": "200"}


def _items_run(before: str, after: str) -> float:
    return metric_value(after, "edgeopt_batch_size_sum") - metric_value(before, "edgeopt_batch_size_sum")


# ---------------------------------------------------------------------------------------------
# 1. a heavy request within every limit: bounded batches, turns, dropped work, memory
# ---------------------------------------------------------------------------------------------

def test_heavy_request_is_split_and_others_are_answered_meanwhile(serve_cls_onnx, cls_ref):
    """512 long texts (~128 tokens each) at 256 tokens per batch: 256 model calls. A one-text request
    sent after it is answered long before it, and no batch went over the bound."""
    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            heavy = asyncio.ensure_future(c.post("/v1/predict", json={"inputs": [LONG_TEXT] * 512}))
            await asyncio.sleep(0.1)
            t = time.perf_counter()
            light = await c.post("/v1/predict", json={"inputs": [TEXTS[0]]})
            light_s = time.perf_counter() - t
            light_first = not heavy.done()
            return await heavy, light, light_s, light_first

    with live_server(serve_cls_onnx, max_batch_tokens=256, max_items=512) as srv:
        before = srv.metrics()
        heavy, light, light_s, light_first = asyncio.run(main(srv.url))
        after = srv.metrics()
    assert heavy.status_code == 200 and len(heavy.json()["predictions"]) == 512
    assert light.status_code == 200
    check_prediction(light.json()["predictions"][0], cls_ref.one(TEXTS[0]), CLS_LABELS)
    assert light_first, f"the one-text request waited for all of the heavy one ({light_s:.2f} s)"
    assert metric_value(after, "edgeopt_batch_tokens_bucket", {"le": "256.0"}) == metric_value(after, "edgeopt_batch_tokens_count")
    assert _items_run(before, after) == 513


# 200 short texts, one per model call (a batch is bounded at 8 tokens), each call made to take 10 ms:
# two seconds of work
MANY = [TEXTS[0]] * 200


def slow_model(srv, seconds: float = 0.01):
    """Make the served model take ``seconds`` per call (a test model answers in 0.1 ms)."""
    state = srv.app.state.serve_state
    rt = state["rt"]

    class Slow:
        input_names, output_names = rt.input_names, rt.output_names

        def run(self, feeds, **kw):
            time.sleep(seconds)
            return rt.run(feeds)

    state["rt"] = Slow()


def test_timed_out_request_has_its_queued_work_dropped(serve_cls_onnx):
    with live_server(serve_cls_onnx, max_batch_tokens=8, max_items=200, timeout_s=0.3) as srv:
        slow_model(srv)
        before = srv.metrics()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            msg = assert_error_body(c.post("/v1/predict", json={"inputs": MANY}), 504)
            assert "0.3 s" in msg
            time.sleep(0.3)  # the batch under way when it timed out finishes
            after = srv.metrics()
            # the server is free at once: the next request is answered
            assert c.post("/v1/predict", json={"inputs": [TEXTS[1]]}).status_code == 200
    ran = _items_run(before, after)
    dropped = metric_value(after, "edgeopt_dropped_items_total")
    assert 0 < ran < 200 and ran + dropped == 200, (ran, dropped)
    assert metric_value(after, "edgeopt_cancelled_requests_total", {"reason": "timeout"}) == 1
    assert metric_value(after, "edgeopt_requests_total", {"route": "/v1/predict", "status": "504"}) == 1


def test_client_that_goes_away_has_its_queued_work_dropped(serve_cls_onnx):
    with live_server(serve_cls_onnx, max_batch_tokens=8, max_items=200) as srv:
        slow_model(srv)
        before = srv.metrics()
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(srv.url + "/v1/predict", json={"inputs": MANY}, timeout=0.3)
        deadline = time.monotonic() + 10
        while metric_value(srv.metrics(), "edgeopt_cancelled_requests_total", {"reason": "disconnect"}) < 1:
            assert time.monotonic() < deadline, "the server never noticed the client had gone"
            time.sleep(0.05)
        time.sleep(0.2)
        after = srv.metrics()
        assert httpx.post(srv.url + "/v1/predict", json={"inputs": [TEXTS[1]]}).status_code == 200
    ran = _items_run(before, after)
    assert 0 < ran < 200 and ran + metric_value(after, "edgeopt_dropped_items_total") == 200
    # logged and counted as 499 (nginx's "client closed request"), which nobody receives
    assert metric_value(after, "edgeopt_requests_total", {"route": "/v1/predict", "status": "499"}) == 1


def test_big_batch_releases_memory_with_the_same_outputs(serve_emb_onnx):
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.runtime import load_runtime

    rt = load_runtime(serve_emb_onnx, threads=1)
    pre = Preprocessor(serve_emb_onnx)
    feeds = pre.collate(pre.tokenize([LONG_TEXT] * 8 + TEXTS))
    for a, b in zip(rt.run(feeds), rt.run(feeds, release_memory=True)):
        np.testing.assert_array_equal(a, b)
    # the tokenizer's two roads agree: per-text tokens padded per batch == one padded call
    direct = pre([LONG_TEXT] * 8 + TEXTS)
    assert all(np.array_equal(direct[k], feeds[k]) for k in direct)


# ---------------------------------------------------------------------------------------------
# 3. a lone client does not wait for company that is not queued for inference
# ---------------------------------------------------------------------------------------------

def test_lone_client_does_not_wait_for_a_slow_upload_or_a_scrape(serve_cls_onnx):
    with live_server(serve_cls_onnx, max_wait_ms=1000) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        c.post("/v1/predict", json={"inputs": [TEXTS[0]]})  # warm
        with socket.create_connection(("127.0.0.1", srv.port)) as slow:
            # a request whose body is half sent, and stays so
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"inputs\": [")
            time.sleep(0.1)
            with httpx.Client(base_url=srv.url, timeout=30) as scraper:
                scraper.get("/metrics")
                times = []
                for t in TEXTS[:4]:
                    t0 = time.perf_counter()
                    assert c.post("/v1/predict", json={"inputs": [t]}).status_code == 200
                    times.append(time.perf_counter() - t0)
                    scraper.get("/metrics")
    # waiting for company would cost max_wait_ms (1 s) per request
    assert max(times) < 0.5, times


# ---------------------------------------------------------------------------------------------
# 2. several workers: one metrics view, ready only when all are
# ---------------------------------------------------------------------------------------------

def test_workers_share_metrics_and_readiness(serve_cls_onnx):
    srv = start_cli_server(serve_cls_onnx, "--workers", "2", "--threads", "1", "--no-access-log")
    try:
        # ready means every worker is: predictions right after it never meet a loading worker
        async def burst(n):
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as c:
                return await asyncio.gather(*(c.post("/v1/predict", json={"inputs": [TEXTS[i % 8]]}) for i in range(n)))

        codes = [r.status_code for r in asyncio.run(burst(40))]
        assert codes == [200] * 40, codes
        # every scrape, whichever worker answers it (a new connection each), sees all 40
        counts, pids = set(), set()
        for _ in range(8):
            text = httpx.get(srv.url + "/metrics", headers={"Connection": "close"}).text
            counts.add(metric_value(text, "edgeopt_requests_total", PREDICT_OK))
            from prometheus_client.parser import text_string_to_metric_families

            for fam in text_string_to_metric_families(text):
                if fam.name == "process_resident_memory_bytes":
                    pids |= {s.labels["pid"] for s in fam.samples}
        assert counts == {40.0}, counts
        assert len(pids) == 2, pids  # process metrics of each worker, labelled by pid
        assert metric_value(text, "edgeopt_items_total") == 40
    finally:
        rc = srv.stop()
    assert rc == 0, srv.log()


def test_worker_board_counts_live_ready_workers(tmp_path):
    import os
    import subprocess
    import sys

    from edgeopt.serve.workers import WorkerBoard

    board = WorkerBoard(tmp_path)
    assert board.count_ready() == 0
    board.ready()
    assert board.count_ready() == 1
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"ready-{dead.stdout.strip()}").touch()  # a worker that died after it was ready
    assert board.count_ready() == 1
    board.leave()
    assert board.count_ready() == 0 and not (tmp_path / f"ready-{os.getpid()}").exists()


# ---------------------------------------------------------------------------------------------
# 6. HTTP details
# ---------------------------------------------------------------------------------------------

def test_http_details(serve_cls_onnx, cls_ref):
    with live_server(serve_cls_onnx) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        body = json.dumps({"inputs": [TEXTS[0]]}).encode()
        # a body that is not declared JSON: 415 naming the media type to send
        msg = assert_error_body(c.post("/v1/predict", content=body, headers={"Content-Type": "text/plain"}), 415)
        assert "application/json" in msg and "text/plain" in msg
        msg = assert_error_body(c.post("/v1/predict", content=body,
                                       headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
        assert c.post("/v1/predict", content=body, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200
        # gzip bodies are accepted; bad gzip and unknown encodings are named
        r = c.post("/v1/predict", content=gzip.compress(body),
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text
        check_prediction(r.json()["predictions"][0], cls_ref.one(TEXTS[0]), CLS_LABELS)
        assert "gzip" in assert_error_body(c.post("/v1/predict", content=b"not gzip at all", headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"}), 400)
        assert "br" in assert_error_body(c.post("/v1/predict", content=body, headers={
            "Content-Type": "application/json", "Content-Encoding": "br"}), 415)
        # invalid UTF-8: 400 naming the byte
        assert "byte 13" in assert_error_body(c.post("/v1/predict", content=b'{"inputs": ["\xc3\x28"]}',
                                                     headers={"Content-Type": "application/json"}), 400)
        # top_k must be an integer, not a boolean
        assert "top_k" in assert_error_body(c.post("/v1/predict", json={"inputs": ["x"], "top_k": True}), 422)
        # HEAD on the probes
        for path in ("/healthz", "/readyz"):
            r = c.head(path)
            assert r.status_code == 200 and r.content == b""
        # request ids: the client's is echoed, a bad one replaced, a missing one made up
        assert c.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        made = c.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
        assert made != "bad id\twith spaces" and len(made) == 32
        assert len(c.get("/healthz").headers["x-request-id"]) == 32
        assert c.post("/v1/predict", json={"inputs": "x"}).headers["x-request-id"]  # errors carry one too
        # metrics: process_*, a scrape is not in flight, latency buckets reach the timeout
        text = c.get("/metrics").text
        assert metric_value(text, "process_resident_memory_bytes") > 0
        assert metric_value(text, "process_cpu_seconds_total") > 0
        assert metric_value(text, "edgeopt_in_flight_requests") == 0
        assert 'edgeopt_request_latency_seconds_bucket{le="30.0",route="/v1/predict"}' in text
        assert metric_value(text, "edgeopt_requests_total", {"route": "/v1/predict", "status": "415"}) == 3


def test_gzip_bomb_is_413(serve_cls_onnx):
    with live_server(serve_cls_onnx, max_body_bytes=64 * 1024) as srv:
        bomb = gzip.compress(b'{"inputs": ["' + b"a" * 10_000_000 + b'"]}')
        assert len(bomb) < 64 * 1024
        r = httpx.post(srv.url + "/v1/predict", content=bomb,
                       headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}, timeout=30)
        assert "decompressed" in assert_error_body(r, 413)


def test_json_logs_with_request_ids(serve_cls_onnx):
    srv = start_cli_server(serve_cls_onnx, "--threads", "1", "--log-format", "json")
    try:
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": [TEXTS[0]]}, headers={"X-Request-ID": "req-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
        httpx.post(srv.url + "/v1/predict", json={"inputs": "not a list"})
    finally:
        rc = srv.stop()
    assert rc == 0
    lines = [line for line in srv.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(rec) for rec in records)
    access = [rec for rec in records if rec["logger"] == "edgeopt.access"]
    ok = next(rec for rec in access if rec.get("request_id") == "req-42")
    assert ok["method"] == "POST" and ok["path"] == "/v1/predict" and ok["status"] == 200 and ok["duration_ms"] > 0
    assert any(rec["status"] == 422 for rec in access)
    # every line is JSON, uvicorn's too (where it listens, its shutdown)
    plain = [line for line in srv.log().splitlines() if line and not line.startswith("{")]
    assert plain == [], plain
    assert any("Uvicorn running on" in rec["message"] for rec in records)


def test_access_log_off_and_log_level(serve_cls_onnx):
    srv = start_cli_server(serve_cls_onnx, "--threads", "1", "--no-access-log", "--log-level", "warning")
    try:
        assert httpx.post(srv.url + "/v1/predict", json={"inputs": [TEXTS[0]]}).status_code == 200
    finally:
        srv.stop()
    log = srv.log()
    assert "/v1/predict" not in log and "INFO" not in log, log


def test_bad_log_options_are_one_line(serve_cls_onnx):
    from test_cli import assert_clean_failure, cli

    for args, word in ((["--log-level", "loud"], "--log-level"), (["--log-format", "xml"], "--log-format")):
        r = cli("serve", str(serve_cls_onnx.path), *args)
        assert word in assert_clean_failure(r, codes=(2,))


def test_multiprocess_metrics_forget_a_dead_workers_live_gauges(tmp_path):
    """Run in a child process: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported."""
    import subprocess
    import sys

    code = r'''
import os, subprocess, sys
from pathlib import Path
folder = Path(sys.argv[1])
from edgeopt.serve.metrics import ServeMetrics
m = ServeMetrics(30.0, multiprocess=True)
m.in_flight.inc(3)
m.requests.labels("/v1/predict", "POST", "200").inc(5)
# a worker that died with 2 requests in flight: its live gauge file is left behind
dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
mine = next(folder.glob(f"gauge_livesum_{os.getpid()}.db"))
(folder / f"gauge_livesum_{dead}.db").write_bytes(mine.read_bytes())
text = m.exposition().decode()
print(text)
'''
    env = {**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert metric_value(out.stdout, "edgeopt_in_flight_requests") == 3  # the dead worker's 3 are gone
    assert metric_value(out.stdout, "edgeopt_requests_total", PREDICT_OK) == 5
    assert metric_value(out.stdout, "process_resident_memory_bytes") > 0
