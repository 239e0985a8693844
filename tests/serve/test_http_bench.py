"""`edgeopt bench --url`: the HTTP load generator against a live `edgeopt serve`."""
from __future__ import annotations

import asyncio
import json
import subprocess
import threading

import pytest
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
    from serve_helpers import live_server

    from edgeopt.bench.http import LoadConfig, load_test
    from edgeopt.errors import ConfigError

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
    assert "load: closed loop, 2 connections (2 opened); 1 client process (CPU " in out, out
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


# ---------------------------------------------------------------------------------------------
# the lean client against servers that answer in every way HTTP/1.1 allows (real sockets, 127.0.0.1)
# ---------------------------------------------------------------------------------------------

MODEL_INFO = {"name": "raw", "precision": "fp32", "labels": ["a", "b", "c"], "preprocessing": {"kind": "text"}}


class RawServer:
    """A tiny HTTP/1.1 server on raw asyncio streams, in a thread. GET /v1/model describes a text
    classifier; POST /v1/predict answers label 'a' for every input, framed as ``mode`` says:
    'length' (Content-Length, keep-alive), 'chunked' (Transfer-Encoding: chunked, several chunks, an
    extension and a trailer), 'close' (Connection: close after each answer), 'eof' (no length: the body
    ends when the server closes), 'hang' (never answers a prediction). ``delay``: seconds to sleep
    before each prediction."""

    def __init__(self, mode: str = "length", delay: float = 0.0):
        self.mode, self.delay = mode, delay
        self.predictions = 0  # POST /v1/predict requests read
        self.connections = 0  # accepted
        self.in_flight = self.max_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RawServer":
        self.thread.start()
        assert self.ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                hdrs = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
                body = await r.readexactly(int(hdrs.get("content-length", 0)))
                if path == "/v1/model":
                    w.write(self._answer(json.dumps(MODEL_INFO).encode(), "length"))
                    continue
                assert (method, path) == ("POST", "/v1/predict"), lines[0]
                self.predictions += 1
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if self.mode == "hang":
                        await asyncio.sleep(3600)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    n = len(json.loads(body)["inputs"])
                    out = json.dumps({"predictions": [{"label": "a", "score": 0.9}] * n}).encode()
                    w.write(self._answer(out, self.mode))
                finally:
                    self.in_flight -= 1
                if self.mode in ("close", "eof"):
                    await w.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    @staticmethod
    def _answer(body: bytes, mode: str) -> bytes:
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if mode == "chunked":
            cut = [body[:5], body[5:17], body[17:]]
            chunks = b"".join(f"{len(c):x};ext=1\r\n".encode() + c + b"\r\n" for c in cut if c)
            return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\nX-Trailer: 1\r\n\r\n"
        if mode == "eof":
            return (head + "Connection: close\r\n\r\n").encode() + body
        extra = "Connection: close\r\n" if mode == "close" else ""
        return (head + extra + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _ok(pred: str = "/v1/predict") -> dict:
    return {"route": pred, "method": "POST", "status": "200"}


def test_open_loop_rate_sends_the_schedule_and_the_server_counts_every_request(cls_server):
    from edgeopt.bench.http import LoadConfig, load_test

    before = cls_server.metrics()
    rep = load_test(LoadConfig(url=cls_server.url, rate=40, duration_s=2.0, warmup=0))
    after = cls_server.metrics()
    (row,) = rep.rows
    assert rep.mode == "open-loop" and rep.rate == 40 and rep.processes == 1
    assert row.requests == 80  # 40/s for 2 s: due at 0, 1/40, ..., 79/40 s
    assert row.status_counts == {"200": 80} and row.errors == 0
    assert metric_value(after, "edgeopt_requests_total", _ok()) - metric_value(before, "edgeopt_requests_total", _ok()) == 80
    assert 0.75 * 40 <= rep.send_rate <= 1.05 * 40, rep.send_rate  # late only when this machine is very busy
    assert 1 <= row.concurrency <= rep.connections <= 256  # connections opened as needed
    assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
    assert len(rep.client_cpu) == 1 and 0 <= rep.client_cpu[0] < 1.5


def test_two_processes_split_the_work_and_the_results_merge(cls_server, labelled_jsonl):
    from edgeopt.bench.http import LoadConfig, load_test

    one = load_test(LoadConfig(url=cls_server.url, concurrency=2, requests=41, data=str(labelled_jsonl), warmup=0))
    before = cls_server.metrics()
    two = load_test(LoadConfig(url=cls_server.url, concurrency=4, requests=41, data=str(labelled_jsonl), warmup=0,
                               processes=2))
    mid = cls_server.metrics()
    (row,) = two.rows
    assert row.requests == 41 and row.status_counts == {"200": 41} and row.concurrency == 4
    assert metric_value(mid, "edgeopt_requests_total", _ok()) - metric_value(before, "edgeopt_requests_total", _ok()) == 41
    assert two.processes == 2 and len(two.client_cpu) == 2 and two.connections == 4
    # the same 41 payloads (0..40 over the 8 labelled sentences), whichever process sent each: the same accuracy
    assert row.accuracy is not None and row.accuracy == one.rows[0].accuracy
    # the open loop splits the schedule: process 1 sends 0, 2, 4, ... and process 2 1, 3, 5, ...
    rate = load_test(LoadConfig(url=cls_server.url, rate=30, requests=45, warmup=0, processes=2))
    after = cls_server.metrics()
    assert rate.rows[0].requests == 45 and rate.rows[0].status_counts == {"200": 45}
    assert metric_value(after, "edgeopt_requests_total", _ok()) - metric_value(mid, "edgeopt_requests_total", _ok()) == 45
    assert len(rate.client_cpu) == 2 and 0.75 * 30 <= rate.send_rate <= 1.05 * 30, rate.send_rate


def test_open_loop_latency_runs_from_the_schedule():
    """200 ms per request and at most 2 connections: capacity 10 requests/s. Asked for 20/s, the backlog
    grows and so does latency, counted from each request's scheduled time; the closed loop on the same
    2 connections reports ~200 ms whatever the backlog would have been (coordinated omission)."""
    from edgeopt.bench.http import LoadConfig, load_test

    with RawServer(delay=0.2) as srv:
        p = subprocess.run([EDGEOPT_BIN, "bench", "--url", srv.url, "--rate", "20", "--duration", "1.5",
                            "--max-connections", "2", "--json"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        over = json.loads(p.stdout)
        row = over["rows"][0]
        assert row["requests"] == 30 and row["status_counts"] == {"200": 30}
        assert srv.max_in_flight <= 2  # the cap held
        # request k is due at k/20 s and answered at about (k//2 + 1) * 0.2 s: p50 ~0.95 s, p99 ~1.5 s
        assert row["p50_ms"] > 500 and row["p99_ms"] > 1000, row
        assert row["concurrency"] == 2
        assert any("waited" in w and "--max-connections" in w for w in over["warnings"]), over["warnings"]
        assert "warning:" in p.stderr and "waited" in p.stderr
        assert over["mode"] == "open-loop" and over["client_limited"] is False

        under = load_test(LoadConfig(url=srv.url, rate=4, duration_s=1.0, max_connections=2, warmup=0))
        assert under.rows[0].requests == 4 and under.rows[0].status_counts == {"200": 4}
        assert 190 <= under.rows[0].p50_ms < 450 and under.rows[0].p99_ms < 800, under.rows[0]
        assert not under.warnings

        closed = load_test(LoadConfig(url=srv.url, concurrency=2, requests=6, warmup=0))
        assert 190 <= closed.rows[0].p99_ms < 800, closed.rows[0]


def test_chunked_answers_parse_and_keep_the_connection(labelled_jsonl):
    from edgeopt.bench.http import LoadConfig, load_test

    with RawServer("chunked") as srv:
        rep = load_test(LoadConfig(url=srv.url, concurrency=2, requests=16, data=str(labelled_jsonl), warmup=0))
    (row,) = rep.rows
    assert row.status_counts == {"200": 16}
    assert row.accuracy == 3 / 8  # every answer is 'a'; 3 of the 8 labelled sentences are 'a': bodies were read whole
    assert rep.connections == 2 and srv.connections == 2 + 1  # kept alive across chunked answers (+1: the probe)


@pytest.mark.parametrize("mode", ["close", "eof"])
def test_a_server_that_closes_after_each_answer(labelled_jsonl, mode):
    from edgeopt.bench.http import LoadConfig, load_test

    with RawServer(mode) as srv:
        rep = load_test(LoadConfig(url=srv.url, concurrency=2, requests=24, data=str(labelled_jsonl), warmup=2))
        rate = load_test(LoadConfig(url=srv.url, rate=50, requests=10, warmup=0))
    assert rep.rows[0].status_counts == {"200": 24} and rep.rows[0].accuracy == 3 / 8  # 3 times the 8 sentences
    assert rep.connections == 24  # one per request: 2 opened before the clock, then a new one after each answer
    assert rate.rows[0].status_counts == {"200": 10}
    assert srv.predictions == 2 + 24 + 10


def test_a_timeout_is_an_error_kind_not_a_crash():
    from edgeopt.bench.http import LoadConfig, load_test

    with RawServer("hang") as srv:
        rep = load_test(LoadConfig(url=srv.url, concurrency=2, requests=4, timeout_s=0.3, warmup=0))
        rate = load_test(LoadConfig(url=srv.url, rate=20, requests=4, timeout_s=0.3, warmup=0))
    (row,) = rep.rows
    assert row.status_counts == {"timeout": 4} and row.errors == 4 and row.requests == 4
    assert row.p50_ms >= 300 and row.throughput == 0
    assert rep.connections == 4  # a timed-out connection is dropped: each request opened a new one
    assert rate.rows[0].status_counts == {"timeout": 4}


def test_client_limits_decision():
    from edgeopt.bench.http import client_limits

    assert client_limits([0.2, 0.79]) == []
    (w,) = client_limits([0.3, 0.93])
    assert "0.93 of a CPU core in process 2" in w and "--processes" in w
    assert len(client_limits([0.95, 0.9])) == 2
    # open loop: sends short of 95% of the asked rate, and late by more than timer granularity
    (w,) = client_limits([0.5], rate=1000, send_rate=800, end_lag_s=0.5)
    assert "fell behind its schedule" in w and "800.0 requests/s of the 1000 asked" in w
    assert client_limits([0.5], rate=1000, send_rate=960, end_lag_s=0.05) == []  # within 95%
    assert client_limits([0.5], rate=1000, send_rate=900, end_lag_s=0.002) == []  # a short run, 2 ms late: timers
    assert client_limits([0.5], rate=None, send_rate=None) == []


def test_bad_combinations_are_one_line_config_errors(cls_server):
    from pydantic import ValidationError

    from edgeopt.bench.http import LoadConfig, load_test
    from edgeopt.errors import ConfigError

    cases = [
        (dict(url="https://127.0.0.1:1"), "http://"),
        (dict(url="127.0.0.1:8000"), "http://HOST:PORT"),
        (dict(url=cls_server.url, rate=10, concurrency=4), "--max-connections"),
        (dict(url=cls_server.url, max_connections=4), "--rate"),
        (dict(url=cls_server.url, concurrency=2, processes=3), "--processes 3 is more than --concurrency 2"),
        (dict(url=cls_server.url, rate=10, max_connections=2, processes=3), "--processes 3 is more than --max-connections 2"),
        (dict(url=cls_server.url, requests=1, processes=2), "--requests 1 is fewer than --processes 2"),
    ]
    for kw, match in cases:
        with pytest.raises(ConfigError, match=match.replace("(", r"\(")) as e:
            load_test(LoadConfig(**kw))
        assert "\n" not in str(e.value)
    with pytest.raises(ValidationError):
        LoadConfig(url=cls_server.url, rate=0)
    p = subprocess.run([EDGEOPT_BIN, "bench", "--url", cls_server.url, "--rate", "0"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "--rate" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_cli_json_says_what_the_client_used(cls_server):
    p = subprocess.run([EDGEOPT_BIN, "bench", "--url", cls_server.url, "--rate", "25", "--requests", "20", "--processes",
                        "2", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["kind"] == "edgeopt bench report" and out["mode"] == "open-loop" and out["processes"] == 2
    assert out["rows"][0]["requests"] == 20 and out["rows"][0]["status_counts"] == {"200": 20}
    assert len(out["client_cpu"]) == 2 and all(0 <= c < 1.5 for c in out["client_cpu"])
    assert isinstance(out["client_limited"], bool) and out["rate"] == 25 and out["send_rate"] > 20
