"""`edgeopt serve` under load, on the real product classifier (all-MiniLM-L6-v2 fine-tuned, int8 dynamic).

Prints side-by-side numbers and ratios from one run:

1. overhead: in-process p50 (edgeopt runtime + preprocessor, one text at a time) vs the server's p50 at
   concurrency 1 (micro-batched server and batching-off server);
2. micro-batching: throughput with 16 concurrent clients, batched (max_batch 16, max_wait_ms 5) vs
   batching off (max_batch 1, max_wait_ms 0);
3. "usual tutorial" server: plain FastAPI, tokenizer padding="max_length" (128), one request at a time with
   onnxruntime on the same ONNX file; throughput at 16 clients vs edgeopt;
4. soak: 32 concurrent clients for --soak-seconds against the batched server: errors and server RSS growth
   (psutil) from after warm-up to the end.

Every server is a subprocess (`edgeopt serve ... --threads 2`, or this script in --tutorial-server mode), so
its RSS is measurable; the load generator is `edgeopt.bench.http.load_test`. The client shares the machine
with the servers, so absolute numbers are modest and noisy; the ratios are the point.

    python benchmarks/serve_load.py [--workdir runs/serve-load] [--soak-seconds 300] [--md serve_load.md]
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from _procs import PeakSampler, print_report, stop_process  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "product-classifier" / "data" / "test.jsonl"
EDGEOPT_BIN = str(Path(sys.executable).parent / "edgeopt")


# ---------------------------------------------------------------------------------------------
# the "usual tutorial" server (run as a subprocess of this script)
# ---------------------------------------------------------------------------------------------

def tutorial_app(artifact_dir: Path, threads: int):
    """What most FastAPI + ONNX Runtime tutorials write: pad every text to 128 tokens, one request at a time.

    (No ``from __future__ import annotations`` in this file: FastAPI must see the real ``Request`` class.)"""
    import json

    import numpy as np
    import onnxruntime as ort
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import AutoTokenizer

    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    labels = manifest["labels"]
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir / "tokenizer")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    app = FastAPI()

    class Request(BaseModel):
        inputs: list[str]

    @app.get("/v1/model")
    async def model():
        return {"name": "tutorial-fastapi", "labels": labels, "precision": "int8", "preprocessing": {"kind": "text"}}

    @app.post("/v1/predict")
    async def predict(req: Request):  # async def + a blocking call: requests run strictly one at a time
        enc = tokenizer(req.inputs, padding="max_length", max_length=128, truncation=True, return_tensors="np")
        feeds = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"], dtype=np.int64)
                 for n in input_names}
        logits = session.run(None, feeds)[0]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return {"predictions": [{"label": labels[int(i)], "score": float(r[i])} for r, i in zip(p, p.argmax(-1))]}

    return app


def run_tutorial_server(artifact_dir: Path, port: int, threads: int) -> None:
    import uvicorn

    uvicorn.run(tutorial_app(artifact_dir, threads), host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------------------------------------
# servers as subprocesses
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log_dir: Path):
        self.name, self.cmd, self.port = name, cmd, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def wait_ready(self, path: str, timeout: float = 180.0) -> "Server":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def rss_mb(self) -> float:
        import psutil

        p = psutil.Process(self.proc.pid)
        return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@contextmanager
def edgeopt_server(name: str, artifact: Path, log_dir: Path, threads: int, max_batch: int,
                   max_wait_ms: float) -> Iterator[Server]:
    port = free_port()
    # --log-level is not an option of `edgeopt serve`: uvicorn logs each request at info level into the log file
    cmd = [EDGEOPT_BIN, "serve", str(artifact), "--port", str(port), "--threads", str(threads),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    srv = Server(name, cmd, port, log_dir)
    try:
        yield srv.wait_ready("/readyz")
    finally:
        srv.stop()


@contextmanager
def tutorial_server(artifact: Path, log_dir: Path, threads: int) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--tutorial-server", str(artifact), "--port", str(port),
           "--threads", str(threads)]
    srv = Server("tutorial", cmd, port, log_dir)
    try:
        yield srv.wait_ready("/v1/model")
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------

def load(url: str, concurrency: int, requests: Optional[int] = None, duration_s: Optional[float] = None,
         warmup: int = 8):
    from edgeopt.bench.http import LoadConfig, load_test

    rep = load_test(LoadConfig(url=url, concurrency=concurrency, requests=requests, duration_s=duration_s,
                               data=str(DATA), warmup=warmup, timeout_s=60))
    return rep.rows[0]


def in_process_latency(artifact: Path, threads: int, runs: int) -> dict:
    import numpy as np

    from edgeopt.artifact import load_artifact
    from edgeopt.data import load_dataset
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.runtime import load_runtime

    art = load_artifact(artifact)
    rt = load_runtime(art, threads=threads)
    pre = Preprocessor(art)
    texts = list(load_dataset(str(DATA), kind="text").samples)
    for t in texts[:10]:
        rt.run(pre([t]))
    lat = []
    for i in range(runs):
        t0 = time.perf_counter()
        rt.run(pre([texts[i % len(texts)]]))
        lat.append((time.perf_counter() - t0) * 1000)
    a = np.asarray(lat)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "throughput": 1000 / float(a.mean())}


def soak(srv: Server, seconds: float, concurrency: int, warmup_s: float) -> dict:
    load(srv.url, concurrency, duration_s=warmup_s, warmup=0)  # warm-up under the same load
    rss_start = srv.rss_mb()
    with PeakSampler(srv.rss_mb, 1.0) as sampler:
        row = load(srv.url, concurrency, duration_s=seconds, warmup=0)
    rss_end = srv.rss_mb()
    return {"row": row, "rss_start": rss_start, "rss_end": rss_end, "rss_peak": max([rss_start, rss_end, *sampler.samples]),
            "rss_growth": rss_end - rss_start, "alive": srv.proc.poll() is None}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def fmt(x: Optional[float], nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "serve-load",
                    help="demo workdir (the product classifier is trained/cached there)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-requests", type=int, default=300, help="requests for the concurrency-1 latency runs")
    ap.add_argument("--throughput-requests", type=int, default=800, help="requests for the 16-client throughput runs")
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--tutorial-server", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.tutorial_server is not None:  # subprocess mode
        run_tutorial_server(args.tutorial_server, args.port, args.threads)
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from edgeopt.demo import run_demo

    t_start = time.perf_counter()
    print(f"building / loading the product classifier in {args.workdir} (first time: a few minutes) ...", flush=True)
    res = run_demo(args.workdir)
    int8 = next(s.path for s in res.stages if s.name == "int8")
    print(f"artifact: {int8}", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    results: dict = {}

    print("1/4 in-process latency ...", flush=True)
    results["inproc"] = in_process_latency(int8, args.threads, args.latency_requests)

    with edgeopt_server("batched", int8, log_dir, args.threads, max_batch=16, max_wait_ms=5) as srv:
        print("1/4 server latency, concurrency 1 (batched) ...", flush=True)
        results["batched_c1"] = load(srv.url, 1, requests=args.latency_requests)
        print("2/4 throughput, 16 clients (batched) ...", flush=True)
        results["batched_c16"] = load(srv.url, 16, requests=args.throughput_requests, warmup=16)
    with edgeopt_server("unbatched", int8, log_dir, args.threads, max_batch=1, max_wait_ms=0) as srv:
        print("1/4 server latency, concurrency 1 (batching off) ...", flush=True)
        results["unbatched_c1"] = load(srv.url, 1, requests=args.latency_requests)
        print("2/4 throughput, 16 clients (batching off) ...", flush=True)
        results["unbatched_c16"] = load(srv.url, 16, requests=args.throughput_requests, warmup=16)
    with tutorial_server(int8, log_dir, args.threads) as srv:
        print("3/4 tutorial server: latency, concurrency 1, and throughput, 16 clients ...", flush=True)
        results["tutorial_c1"] = load(srv.url, 1, requests=args.latency_requests)
        results["tutorial_c16"] = load(srv.url, 16, requests=args.throughput_requests, warmup=16)
    with edgeopt_server("soak", int8, log_dir, args.threads, max_batch=16, max_wait_ms=5) as srv:
        print(f"4/4 soak: 32 clients for {args.soak_seconds:g} s ...", flush=True)
        results["soak"] = soak(srv, args.soak_seconds, 32, warmup_s=min(15.0, max(3.0, args.soak_seconds / 10)))

    md = render(results, args, int8, time.perf_counter() - t_start)
    print_report(md, args.md)
    print(f"server logs: {log_dir}")
    return 0


def render(r: dict, args, artifact: Path, seconds: float) -> str:
    import platform

    inproc = r["inproc"]
    rows = [
        ("in-process (runtime + preprocessor)", "1", inproc, None),
        ("edgeopt serve, batched (16, 5 ms)", "1", r["batched_c1"], None),
        ("edgeopt serve, batching off", "1", r["unbatched_c1"], None),
        ("tutorial FastAPI (pad 128, serial)", "1", r["tutorial_c1"], None),
        ("edgeopt serve, batched (16, 5 ms)", "16", r["batched_c16"], None),
        ("edgeopt serve, batching off", "16", r["unbatched_c16"], None),
        ("tutorial FastAPI (pad 128, serial)", "16", r["tutorial_c16"], None),
        (f"soak: edgeopt serve, batched, {args.soak_seconds:g} s", "32", r["soak"]["row"], None),
    ]

    def get(x, k):
        return x[k] if isinstance(x, dict) else getattr(x, k)

    out = [f"## edgeopt serve under load: product classifier int8 ({artifact.name})", "",
           f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared by client and server, "
           f"--threads {args.threads}; data {DATA.name}; total {seconds / 60:.1f} min.", "",
           "| setup | clients | requests | errors | p50 ms | p90 ms | p99 ms | items/s | accuracy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, conc, x, _ in rows:
        reqs = "-" if isinstance(x, dict) else str(x.requests)
        errs = "-" if isinstance(x, dict) else str(x.errors)
        acc = None if isinstance(x, dict) else x.accuracy
        out.append(f"| {name} | {conc} | {reqs} | {errs} | {fmt(get(x, 'p50_ms'), 2)} | {fmt(get(x, 'p90_ms'), 2)} | "
                   f"{fmt(get(x, 'p99_ms'), 2)} | {fmt(get(x, 'throughput'))} | {fmt(acc, 3)} |")

    b16, u16, t16 = (r[k].throughput for k in ("batched_c16", "unbatched_c16", "tutorial_c16"))
    s = r["soak"]
    out += ["", "| comparison | result |", "|---|---|",
            f"| server overhead at concurrency 1, batched server (p50 minus in-process p50) | "
            f"{r['batched_c1'].p50_ms - inproc['p50_ms']:+.2f} ms ({ratio(r['batched_c1'].p50_ms, inproc['p50_ms'])}) |",
            f"| server overhead at concurrency 1, batching off | "
            f"{r['unbatched_c1'].p50_ms - inproc['p50_ms']:+.2f} ms ({ratio(r['unbatched_c1'].p50_ms, inproc['p50_ms'])}) |",
            f"| micro-batching at 16 clients: batched / batching off throughput | {ratio(b16, u16)} ({b16:.0f} vs {u16:.0f} items/s) |",
            f"| edgeopt (batched) / tutorial FastAPI throughput at 16 clients | {ratio(b16, t16)} ({b16:.0f} vs {t16:.0f} items/s) |",
            f"| edgeopt (batching off) / tutorial FastAPI throughput at 16 clients | {ratio(u16, t16)} |",
            f"| tutorial / edgeopt batching-off p50 at concurrency 1 | {ratio(r['tutorial_c1'].p50_ms, r['unbatched_c1'].p50_ms)} |",
            f"| soak ({args.soak_seconds:g} s, 32 clients): requests, errors | {s['row'].requests}, {s['row'].errors}"
            f"{'' if s['row'].errors == 0 else ' ' + str(s['row'].status_counts)}; server {'alive' if s['alive'] else 'DEAD'} |",
            f"| soak: server RSS after warm-up -> end (peak) | {s['rss_start']:.0f} -> {s['rss_end']:.0f} MB "
            f"({s['rss_growth']:+.1f} MB, {100 * s['rss_growth'] / s['rss_start']:+.1f}%; peak {s['rss_peak']:.0f} MB) |"]
    return "\n".join(out) + "\n"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a (no successful requests)"


if __name__ == "__main__":
    sys.exit(main())
