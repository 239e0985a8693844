"""`edgeopt serve` against its peers (issue #11): LitServe and a plain FastAPI server, same model, same threads.

Three contenders serve the same ``model.onnx`` of an edgeopt artifact (the int8 product classifier) on 127.0.0.1,
each a subprocess with the same ONNX Runtime threads (intra_op = --threads, default 2; inter_op = 1) and the same
JSON API (POST /v1/predict {"inputs": [text, ...]} -> {"predictions": [{"label", "score"}, ...]}):

1. ``edgeopt serve ARTIFACT --threads 2 --max-batch 16 --max-wait-ms 5`` (+ ``--log-level warning`` /
   ``--no-access-log`` when its ``--help`` lists them: the peers log no request lines either);
2. LitServe (this script in --litserve-server mode): a LitAPI with max_batch_size 16, batch_timeout 5 ms, one CPU
   inference worker, api_path /v1/predict; each batch is tokenized with ``tokenizers`` (dynamic padding to the
   longest text, truncation to the manifest's max_length), run through onnxruntime, softmaxed;
3. plain FastAPI (--fastapi-server mode): no batching, an ``async def`` handler that tokenizes and runs the session
   inline (so requests run one at a time), uvicorn with access_log off and log level warning.

What is measured, per contender and round (load comes from ``hey``, an external Go load generator, so no Python
client competes with the servers for the GIL; its ``-o csv`` output gives every request's latency):

* ready time: from launching the process to the first 200 on its readiness route (edgeopt /readyz, LitServe /health,
  FastAPI /health, answered only once the model is loaded), and the idle RSS of the whole process tree (psutil,
  children recursive; PSS too, since LitServe's processes share pages) 2 s after ready, before any request;
* a prediction check: six texts (one over the 512-token limit) must get the same labels from all three;
* 16 clients for --seconds (after --warmup-seconds of the same load, discarded): throughput (200s per second) and
  p50/p99 latency; then 1 client for --seconds: p50/p99;
* heavy-request probe: 4 "normal" clients (an httpx AsyncClient loop, one text per request) run; one request with
  64 texts of "word " * 819 (4,095 characters each, truncated to 512 tokens) is sent; recorded are its status and
  time, the normal clients' p99/max latency over the requests that overlapped it, and the server tree's RSS before,
  after and at its peak (sampled every 0.1 s). Client timeout 60 s.

Fairness on a small shared machine: only one contender is ever under load, and the load alternates between them in
short slices. Each round starts the three servers one after another (ready time and idle memory are taken while the
others are paused), then cuts each load phase (--seconds at 16 clients, then at 1 client) into slices of about
--slice-seconds and runs them round-robin: contender A for a slice, then B, then C, again, ... (the order rotated
every slice and every round). While one contender is loaded, the other two are paused with SIGSTOP on their whole
process trees, so they take no CPU (idle LitServe polls its queue at about 0.1 core); each is resumed for its slice.
Starting, measuring and stopping one contender after another was tried first and was unfair here: other people's
work on the machine comes in bursts of tens of seconds, and a burst landed on one contender's whole measurement;
with 2-second slices a burst hits all three alike. The heavy-request probe runs once per contender per round, last
(it leaves ONNX Runtime's arena grown), the others paused. The load generator shares the cores with the server
under test, equally for all three. Numbers quoted are medians over rounds; ratios are edgeopt / peer of those
medians. Every hey run also records the CPU that neither the server tree nor the load generator used ("other load",
in cores): the report warns when it was high, and --wait-quiet CORES waits for a quieter machine before each phase.

    python benchmarks/serve_peers.py --artifact /tmp/srvdemo/int8 [--rounds 3] [--seconds 10] [--md out.md]
    python benchmarks/serve_peers.py            # builds / reuses the demo's int8 artifact (as serve_load.py does)
    options: --contenders edgeopt,litserve,fastapi  --threads 2  --max-batch 16  --max-wait-ms 5  --slice-seconds 2
             --warmup-seconds 2  --wait-quiet 0.3 [--wait-quiet-max 120]  --keep-logs

Logs go to a temporary folder that is removed at exit (kept, and its path printed, with --keep-logs).
"""
import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Optional

from _procs import PeakSampler, print_report, stop_process  # benchmarks/ is on sys.path when a script runs

try:  # the LitAPI subclass must live at module level: LitServe pickles it into a spawned worker
    import litserve as _litserve

    _LitAPIBase = _litserve.LitAPI
except Exception:  # pragma: no cover - litserve missing: that contender fails with a clear error
    _litserve = None
    _LitAPIBase = object

ROOT = Path(__file__).resolve().parents[1]
EDGEOPT_BIN = str(Path(sys.executable).parent / "edgeopt")
HEY = shutil.which("hey") or "/usr/bin/hey"
CONTENDERS = ("edgeopt", "litserve", "fastapi")
TITLES = {"edgeopt": "edgeopt serve", "litserve": "LitServe", "fastapi": "plain FastAPI"}
READY_PATH = {"edgeopt": "/readyz", "litserve": "/health", "fastapi": "/health"}
PREDICT_PATH = "/v1/predict"

LOAD_TEXT = "Stainless steel insulated water bottle, 32 oz, leak-proof lid, keeps drinks cold for 24 hours"
HEAVY_TEXT = "word " * 819  # 4,095 characters (edgeopt's default --max-text-chars is 4096)
HEAVY_ITEMS = 64  # edgeopt's default --max-items
CHECK_TEXTS = [
    "Wireless noise-cancelling over-ear headphones with 30-hour battery life",
    "Organic dark roast whole bean coffee, 2 lb bag",
    "Men's waterproof leather hiking boots with ankle support",
    "Non-stick ceramic frying pan set, 3 pieces, dishwasher safe",
    "Grain-free salmon and sweet potato dry dog food, 24 lb",
    HEAVY_TEXT,
]

_INTERRUPTED: list = []  # non-empty after Ctrl-C / SIGTERM: stop the servers without waiting long
_LOAD_AT_START: list = []  # os.getloadavg() when the benchmark began: how busy the shared machine was
# every subprocess this script starts, until it is stopped: cleaned up on any exit
_LIVE: dict = {}


# ---------------------------------------------------------------------------------------------
# the peer servers (this script in a subprocess mode)
# ---------------------------------------------------------------------------------------------

class _Model:
    """tokenizers (dynamic padding, truncation to max_length) + onnxruntime + softmax: what both peers run."""

    def __init__(self, artifact_dir: Path, threads: int):
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        manifest = json.loads((artifact_dir / "manifest.json").read_text())
        self.labels = manifest["labels"]
        pre = (manifest.get("io") or {}).get("preprocessing") or {}
        tok_dir = artifact_dir / (pre.get("tokenizer") or "tokenizer")
        cfg_path = tok_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        pad_token = cfg.get("pad_token") if isinstance(cfg.get("pad_token"), str) else "[PAD]"
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        # tokenizer.json may store a fixed padding / truncation of its own: replace both, as transformers does
        tok.no_padding()
        tok.enable_truncation(max_length=int(pre.get("max_length") or 512))
        tok.enable_padding(pad_id=tok.token_to_id(pad_token) or 0, pad_token=pad_token)  # to the longest in the batch
        self.tok = tok
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(artifact_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.predict(["warm up"])  # first run allocates and picks kernels (edgeopt warms up too)

    def predict(self, texts: list) -> list:
        np = self.np
        encs = self.tok.encode_batch(texts)
        cols = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],
                "token_type_ids": [e.type_ids for e in encs]}
        feeds = {n: np.asarray(cols[n], dtype=np.int64) for n in self.input_names}
        logits = self.session.run(None, feeds)[0]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return [{"label": self.labels[int(i)], "score": float(r[i])} for r, i in zip(p, p.argmax(-1))]


class PeerLitAPI(_LitAPIBase):
    """LitServe contender: one request = {"inputs": [texts]}; a batch of requests becomes one model call."""

    def __init__(self, artifact: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.artifact, self.threads = artifact, threads

    def setup(self, device):
        self.model = _Model(Path(self.artifact), self.threads)

    def decode_request(self, request):
        return list(request["inputs"])

    def batch(self, inputs):  # a list of per-request text lists; predict flattens it
        return inputs

    def predict(self, x):
        sizes = [len(texts) for texts in x]
        preds = self.model.predict([t for texts in x for t in texts])
        out, i = [], 0
        for n in sizes:
            out.append(preds[i:i + n])
            i += n
        return out

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {"predictions": output}


def run_litserve_server(artifact: Path, port: int, threads: int, max_batch: int, max_wait_ms: float) -> None:
    if _litserve is None:
        raise SystemExit("litserve is not installed")

    def on_term(signum, frame):  # LitServe shuts its workers down on KeyboardInterrupt only
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    api = PeerLitAPI(str(artifact), threads, max_batch_size=max_batch, batch_timeout=max_wait_ms / 1000,
                     api_path=PREDICT_PATH)
    server = _litserve.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False, access_log=False)


def fastapi_app(artifact: Path, threads: int):
    """No ``from __future__ import annotations`` in this file: FastAPI must see the real ``Request`` class."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    model = _Model(artifact, threads)
    app = FastAPI()

    class Request(BaseModel):
        inputs: list[str]

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post(PREDICT_PATH)
    async def predict(req: Request):  # async def + blocking calls: one request at a time, no batching
        return {"predictions": model.predict(req.inputs)}

    return app


def run_fastapi_server(artifact: Path, port: int, threads: int) -> None:
    import uvicorn

    uvicorn.run(fastapi_app(artifact, threads), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process (graceful stop, SIGKILL after grace_s: _procs.stop_process), then SIGKILL whatever
    it left of the children it had (LitServe's workers, multiprocessing helpers)."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    for p in [proc.pid] + [k.pid for k in kids]:  # a paused (SIGSTOP) server must run to stop gracefully
        try:
            psutil.Process(p).resume()
        except psutil.Error:
            pass
    try:
        stop_process(proc, grace_s=grace_s)
    finally:
        _, alive = psutil.wait_procs(kids, timeout=5)
        for k in alive:
            try:
                k.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        _LIVE.pop(proc.pid, None)


def cleanup_all() -> None:
    for proc in list(_LIVE.values()):
        try:
            kill_tree(proc, grace_s=5)
        except Exception as e:  # keep going: stop the others
            print(f"warning: could not stop pid {proc.pid}: {e}", file=sys.stderr)


def edgeopt_log_flags() -> list[str]:
    """The quiet-logging options `edgeopt serve` has today (they are being added concurrently)."""
    try:
        out = subprocess.run([EDGEOPT_BIN, "serve", "--help"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}).stdout
    except Exception:
        return []
    flags = []
    if "--log-level" in out:
        flags += ["--log-level", "warning"]
    if "--no-access-log" in out:
        flags += ["--no-access-log"]
    return flags


class Server:
    def __init__(self, name: str, cmd: list, port: int, log_dir: Path):
        self.name, self.cmd, self.port = name, cmd, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}-{port}.log"
        self._log = open(self.log_path, "w")
        self.t_launch = time.perf_counter()
        # own session: a Ctrl-C in the terminal reaches this script only, which then stops the tree itself
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        _LIVE[self.proc.pid] = self.proc

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, path: str, timeout: float = 180.0) -> float:
        """Seconds from launch to the first 200 on ``path`` (polled every 20 ms)."""
        deadline = self.t_launch + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.t_launch
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def procs(self) -> list:
        import psutil

        p = psutil.Process(self.proc.pid)
        return [p] + p.children(recursive=True)

    def rss_mb(self) -> float:
        import psutil

        total = 0
        for p in self.procs():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def memory(self) -> dict:
        """RSS and PSS summed over the process tree, and how many processes it has."""
        import psutil

        procs = self.procs()
        rss = pss = 0
        pss_ok = True
        for p in procs:
            try:
                rss += p.memory_info().rss
                try:
                    pss += p.memory_full_info().pss
                except (psutil.AccessDenied, AttributeError):
                    pss_ok = False
            except psutil.NoSuchProcess:
                pass
        return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20 if pss_ok else None, "procs": len(procs)}

    def pause(self) -> None:
        """SIGSTOP the whole tree: an idle server waiting for its turn uses no CPU (LitServe's worker polls its
        queue, about 0.1 core, even when idle)."""
        import psutil

        for p in self.procs():
            try:
                p.suspend()
            except psutil.Error:
                pass

    def resume(self) -> None:
        import psutil

        for p in reversed(self.procs()):
            try:
                p.resume()
            except psutil.Error:
                pass
        time.sleep(0.1)

    def stop(self) -> None:
        try:
            kill_tree(self.proc, grace_s=3 if _INTERRUPTED else 20)
        finally:
            self._log.close()


def launch(name: str, artifact: Path, log_dir: Path, args, edgeopt_flags: list) -> Server:
    port = free_port()
    if name == "edgeopt":
        cmd = [EDGEOPT_BIN, "serve", str(artifact), "--port", str(port), "--threads", str(args.threads),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), *edgeopt_flags]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), f"--{name}-server", str(artifact), "--port", str(port),
               "--threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--max-wait-ms", str(args.max_wait_ms)]
    return Server(name, cmd, port, log_dir)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------

def pct(values: list, q: float) -> Optional[float]:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def cpu_snapshot(srv: "Server") -> tuple:
    """(time, machine busy CPU s, steal s, server tree CPU s, this script + its reaped children (hey) CPU s)."""
    import resource

    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
    tree = 0.0
    for p in srv.procs():
        try:
            c = p.cpu_times()
            tree += c.user + c.system
        except psutil.Error:
            pass
    own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for a in ("ru_utime", "ru_stime"))
    return time.monotonic(), busy, getattr(t, "steal", 0.0), tree, own


def foreign_load(a: tuple, b: tuple) -> dict:
    """CPU (in cores) that neither the server under test nor the load generator used between two snapshots:
    other people's work on a shared machine, which makes a run noisy."""
    dt = b[0] - a[0]
    if dt <= 0:
        return {}
    return {"foreign_cores": max(0.0, ((b[1] - a[1]) - (b[3] - a[3]) - (b[4] - a[4])) / dt),
            "steal_cores": (b[2] - a[2]) / dt, "server_cores": (b[3] - a[3]) / dt}


def hey(srv: "Server", clients: int, seconds: float, body_file: Path) -> dict:
    """One `hey -z` run; every request's latency comes from its CSV (transport errors such as timeouts are not
    in hey's CSV; they show up as missing throughput)."""
    cmd = [HEY, "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST", "-T", "application/json",
           "-D", str(body_file), "-t", "60", "-o", "csv", srv.url + PREDICT_PATH]
    snap = cpu_snapshot(srv)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _LIVE[proc.pid] = proc
    try:
        out, err = proc.communicate(timeout=seconds + 120)
    finally:
        if proc.poll() is None:
            kill_tree(proc, grace_s=2)
        _LIVE.pop(proc.pid, None)
    load = foreign_load(snap, cpu_snapshot(srv))
    if proc.returncode != 0:
        raise RuntimeError(f"hey failed ({proc.returncode}): {err[-2000:]}")
    lat_ok, statuses, end = [], {}, 0.0
    for line in out.splitlines()[1:]:
        cols = line.split(",")
        if len(cols) < 8:
            continue
        rt, status, offset = float(cols[0]), int(cols[6]), float(cols[7])
        statuses[status] = statuses.get(status, 0) + 1
        end = max(end, offset + rt)
        if status == 200:
            lat_ok.append(rt * 1000)
    return {"lat": lat_ok, "statuses": statuses, "window": end if end > 0 else seconds, **load}


def summarize(runs: list) -> dict:
    """The slices of one contender's phase, as one run: all latencies, 200s over the summed windows, and the
    time-weighted CPU figures."""
    lat = [x for r in runs for x in r["lat"]]
    statuses: dict = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    window = sum(r["window"] for r in runs)
    out = {"ok": len(lat), "non200": sum(v for k, v in statuses.items() if k != 200), "statuses": statuses,
           "slices": len(runs), "seconds": window, "throughput": len(lat) / window if window else None,
           "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None}
    for k in ("foreign_cores", "steal_cores", "server_cores"):
        vals = [(r[k], r["window"]) for r in runs if k in r]
        if vals:
            out[k] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
    return out


def check_predictions(url: str) -> Optional[list]:
    import httpx

    r = httpx.post(url + PREDICT_PATH, json={"inputs": CHECK_TEXTS}, timeout=60)
    if r.status_code != 200:
        return None
    return r.json().get("predictions")


def heavy_probe(srv: Server, normal_clients: int = 4, pre_s: float = 1.0, post_s: float = 1.0,
                timeout_s: float = 60.0) -> dict:
    import httpx

    normal_body = json.dumps({"inputs": [LOAD_TEXT]}).encode()
    heavy_body = json.dumps({"inputs": [HEAVY_TEXT] * HEAVY_ITEMS}).encode()
    headers = {"content-type": "application/json"}
    url = srv.url + PREDICT_PATH
    records: list = []  # (t_start, t_end, status)
    async def run() -> dict:
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=normal_clients + 2, max_keepalive_connections=normal_clients + 2)
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
            async def normal():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        st = (await client.post(url, content=normal_body, headers=headers)).status_code
                    except httpx.HTTPError as e:
                        st = type(e).__name__
                    records.append((t0, time.perf_counter(), st))

            tasks = [asyncio.create_task(normal()) for _ in range(normal_clients)]
            await asyncio.sleep(pre_s)
            rss_before = srv.rss_mb()
            with PeakSampler(srv.rss_mb, 0.1) as sampler:
                h0 = time.perf_counter()
                detail = ""
                try:
                    r = await client.post(url, content=heavy_body, headers=headers)
                    status = r.status_code
                    if status != 200:
                        detail = r.text[:160].replace("|", "/").replace("\n", " ")
                except httpx.TimeoutException:
                    status = "client timeout"
                except httpx.HTTPError as e:
                    status = type(e).__name__
                h1 = time.perf_counter()
            rss_after = srv.rss_mb()
            await asyncio.sleep(post_s)
            stop.set()
            await asyncio.gather(*tasks)
        during = [(e - s) * 1000 for s, e, st in records if s < h1 and e > h0 and st == 200]
        errors = sum(1 for s, e, st in records if s < h1 and e > h0 and st != 200)
        before = [(e - s) * 1000 for s, e, st in records if e <= h0 and st == 200]
        return {"status": status, "detail": detail, "time_s": h1 - h0, "others_n": len(during),
                "others_errors": errors, "others_p99_ms": pct(during, 99),
                "others_max_ms": max(during) if during else None, "baseline_p99_ms": pct(before, 99),
                "rss_before": rss_before, "rss_after": rss_after, "rss_peak": max([rss_after, *sampler.samples])}

    return asyncio.run(run())


def wait_quiet(max_cores: float, max_wait_s: float) -> float:
    """Wait (at most max_wait_s) until the machine's busy CPU over 2 s is at most max_cores: nothing of this
    benchmark runs between contenders, so that is other people's work. Returns the seconds waited."""
    import psutil

    t0 = time.monotonic()
    while True:
        busy = psutil.cpu_percent(interval=2.0) / 100 * (os.cpu_count() or 1)
        waited = time.monotonic() - t0
        if busy <= max_cores or waited >= max_wait_s:
            if waited >= 2.5:
                print(f"  waited {waited:.0f} s for a quiet machine (busy {busy:.2f} cores)", flush=True)
            return waited


def rotate(seq: list, k: int) -> list:
    k %= max(1, len(seq))
    return list(seq[k:]) + list(seq[:k])


def run_round(rnd: int, names: list, artifact: Path, log_dir: Path, args, edgeopt_flags: list, body: Path) -> dict:
    """One round: start the contenders one after another (the others paused), then load them in alternating
    slices, each alone while the others are paused; stop them all."""
    order = rotate(names, rnd)
    res: dict = {n: {} for n in order}
    servers: dict = {}

    def fail(n: str, e: BaseException) -> None:
        res[n]["error"] = f"{type(e).__name__}: {e}"
        print(f"  {TITLES[n]} FAILED: {res[n]['error'][:3000]}", flush=True)
        srv = servers.pop(n, None)
        if srv is not None:
            srv.stop()

    def quiet(phase: str) -> None:
        if args.wait_quiet > 0:
            waited = wait_quiet(args.wait_quiet, args.wait_quiet_max)
            for n in servers:
                res[n][f"waited_{phase}_s"] = waited

    try:
        for n in order:
            quiet("start")
            srv = servers[n] = launch(n, artifact, log_dir, args, edgeopt_flags)
            try:
                res[n]["ready_s"] = srv.wait_ready(READY_PATH[n])
                time.sleep(2.0)
                res[n]["idle"] = srv.memory()
                res[n]["check"] = check_predictions(srv.url)
                hey(srv, 16, args.warmup_seconds, body)  # warm-up, discarded
                srv.pause()
                print(f"  {TITLES[n]}: ready in {res[n]['ready_s']:.2f} s, idle RSS {res[n]['idle']['rss_mb']:.0f} MB",
                      flush=True)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                fail(n, e)

        n_slices = max(1, round(args.seconds / args.slice_seconds))
        for phase, clients in (("c16", 16), ("c1", 1)):
            quiet(phase)
            runs: dict = {n: [] for n in order}
            for i in range(n_slices):
                for n in rotate(order, i):
                    srv = servers.get(n)
                    if srv is None:
                        continue
                    srv.resume()
                    try:
                        runs[n].append(hey(srv, clients, args.seconds / n_slices, body))
                        srv.pause()
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:
                        fail(n, e)
            for n in order:
                if runs[n]:
                    res[n][phase] = summarize(runs[n])
            print("  " + "; ".join(f"{TITLES[n]} {f(get(res[n], phase + '.throughput'))} req/s "
                                   f"p50 {f(get(res[n], phase + '.p50_ms'), 2)} p99 {f(get(res[n], phase + '.p99_ms'), 2)} "
                                   f"(other load {f(get(res[n], phase + '.foreign_cores'), 2)})"
                                   for n in order if phase in res[n]) + f"  [{clients} client(s)]", flush=True)

        quiet("heavy")
        for n in order:
            srv = servers.get(n)
            if srv is None:
                continue
            srv.resume()
            try:
                res[n]["heavy"] = h = heavy_probe(srv)
                res[n]["alive"] = srv.proc.poll() is None
                srv.pause()
                print(f"  {TITLES[n]}: heavy request {h['status']} in {h['time_s']:.2f} s, other clients' p99 "
                      f"{f(h['others_p99_ms'], 0)} ms, RSS {h['rss_before']:.0f} -> {h['rss_after']:.0f} MB", flush=True)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                fail(n, e)
    finally:
        for srv in list(servers.values()):
            srv.stop()
    return res


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def get(r: dict, path: str):
    cur = r
    for k in path.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def med(results: dict, name: str, path: str) -> Optional[float]:
    vals = [v for v in (get(r, path) for r in results[name]) if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def f(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def one_line(text: str) -> str:
    return " / ".join(x.strip() for x in text.splitlines() if x.strip()).replace("|", "/")


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import platform

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except Exception:
        pass
    try:
        start = f"{_LOAD_AT_START[0]:.2f} at the start, " if _LOAD_AT_START else ""
        load = ", load average (1 min) {}{:.2f} at the end".format(start, os.getloadavg()[0])
    except OSError:
        load = ""
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({usable} usable){mem}, " \
           f"{platform.system()} {platform.release()}, Python {platform.python_version()}{load}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("edgeopt", "litserve", "fastapi", "uvicorn", "uvloop", "httptools", "onnxruntime", "tokenizers", "httpx"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    try:
        q = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"], capture_output=True, text=True, timeout=10)
        if q.returncode == 0 and q.stdout.strip():
            out.append(f"hey {q.stdout.strip()}")
    except Exception:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            out.append(f"checkout {rev}{' + uncommitted changes' if dirty else ''}")
    except Exception:
        pass
    return ", ".join(out)


def compare_checks(results: dict, names: list) -> dict:
    """Per contender: 'yes (max |dscore| x)' when every round's labels equal the reference contender's."""
    ref_name = next((n for n in names if any(r.get("check") for r in results[n])), None)
    if ref_name is None:
        return {n: "-" for n in names}
    ref = next(r["check"] for r in results[ref_name] if r.get("check"))
    out = {}
    for n in names:
        checks = [r.get("check") for r in results[n] if "error" not in r or r.get("check")]
        if not checks or any(c is None for c in checks):
            out[n] = "no answer" if not checks or all(c is None for c in checks) else "not every round"
            continue
        same = all(len(c) == len(ref) and all(a["label"] == b["label"] for a, b in zip(c, ref)) for c in checks)
        dmax = max(abs(a["score"] - b["score"]) for c in checks for a, b in zip(c, ref))
        out[n] = ("yes" if same else "**labels differ**") + (f" (max Δscore {dmax:.1e})" if n != ref_name else
                                                              " (reference)")
    return out


def render(results: dict, names: list, args, artifact: Path, cmdline: str, started: str, total_s: float,
           edgeopt_flags: list) -> str:
    E, L, F = "edgeopt", "litserve", "fastapi"
    shown = [n for n in CONTENDERS if n in names]
    n_slices = max(1, round(args.seconds / args.slice_seconds))

    def m(n, path):
        return med(results, n, path) if n in names else None

    def heavy_status(n):
        sts = [str(get(r, "heavy.status")) for r in results[n] if get(r, "heavy.status") is not None]
        if not sts:
            return "-"
        uniq = sorted(set(sts))
        return ", ".join(f"{s} ×{sts.count(s)}" if len(sts) > 1 else s for s in uniq)

    rows = [
        # label, path, digits, ratio?
        ("16 clients: throughput (req/s, higher is better)", "c16.throughput", 1, True),
        ("16 clients: p50 latency (ms)", "c16.p50_ms", 2, True),
        ("16 clients: p99 latency (ms)", "c16.p99_ms", 2, True),
        ("16 clients: non-200 responses (per run)", "c16.non200", 0, False),
        ("1 client: p50 latency (ms)", "c1.p50_ms", 2, True),
        ("1 client: p99 latency (ms)", "c1.p99_ms", 2, True),
        ("1 client: throughput (req/s)", "c1.throughput", 1, True),
        ("16 clients: server CPU used (cores)", "c16.server_cores", 2, False),
        ("16 clients: other load on the machine (cores; noise)", "c16.foreign_cores", 2, False),
        ("1 client: other load on the machine (cores; noise)", "c1.foreign_cores", 2, False),
        ("ready time: launch -> first 200 (s)", "ready_s", 2, True),
        ("idle RSS, whole process tree (MB)", "idle.rss_mb", 0, True),
        ("idle PSS, whole process tree (MB)", "idle.pss_mb", 0, True),
        ("processes in the tree", "idle.procs", 0, False),
        ("heavy probe: its time (s)", "heavy.time_s", 2, True),
        ("heavy probe: other clients' p99 while in flight (ms)", "heavy.others_p99_ms", 1, True),
        ("heavy probe: other clients' max while in flight (ms)", "heavy.others_max_ms", 1, True),
        ("heavy probe: other clients' requests while in flight", "heavy.others_n", 0, False),
        ("heavy probe: other clients' p99 before it (ms)", "heavy.baseline_p99_ms", 1, True),
        ("heavy probe: server RSS before (MB)", "heavy.rss_before", 0, False),
        ("heavy probe: server RSS after (MB)", "heavy.rss_after", 0, False),
        ("heavy probe: server RSS peak (MB)", "heavy.rss_peak", 0, False),
    ]
    out = [f"## `edgeopt serve` vs LitServe vs plain FastAPI: {artifact}", "",
           f"- machine: {machine()}",
           f"- command: `{cmdline}`",
           f"- date: {started}; {args.rounds} round(s), {total_s / 60:.1f} min in all",
           f"- versions: {versions()}",
           f"- settings: ORT intra_op {args.threads} / inter_op 1 for all; batching max {args.max_batch} / "
           f"{args.max_wait_ms:g} ms for edgeopt and LitServe (FastAPI: none, one request at a time); "
           f"edgeopt serve extra flags: {' '.join(edgeopt_flags) or '(none: no quiet-logging options yet)'}",
           f"- load: {args.seconds:g} s at 16 clients, then {args.seconds:g} s at 1 client, per contender, as "
           f"{n_slices} `hey -c 16|1 -z {args.seconds / n_slices:g}s` slices alternating between the contenders "
           f"(the idle ones paused with SIGSTOP); POST one ~20-token text per request; {args.warmup_seconds:g} s of "
           f"16-client warm-up after start; heavy probe: {HEAVY_ITEMS} texts of {len(HEAVY_TEXT):,} characters in one "
           "request while 4 clients send one text each",
           "- values are medians over rounds; ratios are edgeopt / peer (latency, memory: lower is better)", ""]
    noise = [v for n in shown for r in results[n] for v in (get(r, "c16.foreign_cores"), get(r, "c1.foreign_cores"))
             if v is not None]
    if noise and max(noise) > 0.25:
        out += [f"**Noise warning:** other work on this machine used up to {max(noise):.2f} cores (median "
                f"{statistics.median(noise):.2f}) of {os.cpu_count()} during the measured runs (see the per-round "
                "table); compare the rounds before trusting small differences.", ""]
    hdr = "| metric | " + " | ".join(TITLES[n] for n in shown)
    sep = "|---|" + "---:|" * len(shown)
    if E in names and L in names:
        hdr += " | edgeopt / LitServe"
        sep += "---:|"
    if E in names and F in names:
        hdr += " | edgeopt / FastAPI"
        sep += "---:|"
    out += [hdr + " |", sep]
    for label, path, nd, do_ratio in rows:
        line = f"| {label} | " + " | ".join(f(m(n, path), nd) for n in shown)
        if E in names and L in names:
            line += " | " + (ratio(m(E, path), m(L, path)) if do_ratio else "")
        if E in names and F in names:
            line += " | " + (ratio(m(E, path), m(F, path)) if do_ratio else "")
        out.append(line + " |")
    extra = " |" + (" |" if E in names and L in names else "") + (" |" if E in names and F in names else "")
    out.append("| heavy probe: its status | " + " | ".join(heavy_status(n) for n in shown) + extra)
    checks = compare_checks(results, shown)
    out.append("| same labels on 6 check texts (scores differ a little: int8 dynamic quantization depends on "
               "how texts are batched) | " + " | ".join(checks[n] for n in shown) + extra)

    # goals
    out += ["", "### Goals (edgeopt serve, medians over rounds)", ""]

    def goal(text, ok):
        return f"- {'MET' if ok else ('NOT MET' if ok is not None else 'n/a')}: {text}"

    te, tl = m(E, "c16.throughput"), m(L, "c16.throughput")
    pe, pl = m(E, "c16.p99_ms"), m(L, "c16.p99_ms")
    g1 = None if None in (te, tl, pe, pl) else (te >= 1.2 * tl and pe <= pl)
    out.append(goal(f"16 clients: throughput >= 1.2x LitServe ({ratio(te, tl)}: {f(te)} vs {f(tl)} req/s) and "
                    f"p99 <= LitServe's ({f(pe, 2)} vs {f(pl, 2)} ms)", g1))
    ce, cf = m(E, "c1.p50_ms"), m(F, "c1.p50_ms")
    g2 = None if None in (ce, cf) else (ce - cf <= 0.5)
    out.append(goal(f"1 client: p50 within 0.5 ms of plain FastAPI ({f(ce, 2)} vs {f(cf, 2)} ms, "
                    f"{'-' if g2 is None else f'{ce - cf:+.2f}'} ms)", g2))
    re_, me = m(E, "ready_s"), m(E, "idle.rss_mb")
    g3 = None if None in (re_, me) else (re_ <= 2.0 and me <= 150)
    out.append(goal(f"ready <= 2 s ({f(re_, 2)} s) and idle RSS <= 150 MB ({f(me, 0)} MB)", g3))
    he = m(E, "heavy.others_p99_ms")
    worst = max((v for v in (get(r, "heavy.others_p99_ms") for r in results.get(E, [])) if v is not None),
                default=None)
    g4 = None if he is None else he < 1000
    out.append(goal(f"heavy probe: other clients' p99 < 1 s ({f(he, 1)} ms; worst round {f(worst, 1)} ms; "
                    f"heavy request {heavy_status(E) if E in names else '-'})", g4))

    # per round
    out += ["", "### Per round", "",
            "| round | contender | c16 req/s | c16 p50 | c16 p99 | c16 non-200 | c1 p50 | c1 p99 | ready s | "
            "idle RSS MB | heavy status | heavy s | others p99 / max ms | RSS before -> after (peak) | "
            "other load c16 / c1 (cores) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for i in range(args.rounds):
        for n in shown:
            if i >= len(results[n]):
                continue
            r = results[n][i]
            if "error" in r and "c16" not in r:
                out.append(f"| {i + 1} | {TITLES[n]} | failed: {one_line(r['error'])[:160]} |" + " |" * 12)
                continue
            h = r.get("heavy") or {}
            st = str(h.get("status", "-")) + (f" ({h['detail']})" if h.get("detail") else "")
            out.append(
                f"| {i + 1} | {TITLES[n]} | {f(get(r, 'c16.throughput'))} | {f(get(r, 'c16.p50_ms'), 2)} | "
                f"{f(get(r, 'c16.p99_ms'), 2)} | {f(get(r, 'c16.non200'), 0)} | {f(get(r, 'c1.p50_ms'), 2)} | "
                f"{f(get(r, 'c1.p99_ms'), 2)} | {f(r.get('ready_s'), 2)} | {f(get(r, 'idle.rss_mb'), 0)} | {st} | "
                f"{f(h.get('time_s'), 2)} | {f(h.get('others_p99_ms'), 0)} / {f(h.get('others_max_ms'), 0)} | "
                f"{f(h.get('rss_before'), 0)} -> {f(h.get('rss_after'), 0)} ({f(h.get('rss_peak'), 0)}) | "
                f"{f(get(r, 'c16.foreign_cores'), 2)} / {f(get(r, 'c1.foreign_cores'), 2)} |")
    errs = [(i + 1, n, r["error"]) for n in shown for i, r in enumerate(results[n]) if "error" in r]
    if errs:
        out += ["", "Failures:", ""] + [f"- round {i} {TITLES[n]}: {one_line(e)[:600]}" for i, n, e in errs]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, default=None,
                    help="edgeopt artifact folder (default: build / reuse the demo's int8 product classifier)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "serve-load",
                    help="demo workdir used when --artifact is not given (shared with serve_load.py)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per contender and load phase (16 clients, 1 client)")
    ap.add_argument("--slice-seconds", type=float, default=2.0,
                    help="the --seconds of each load phase are cut into slices of about this length, alternating "
                         "between the contenders")
    ap.add_argument("--warmup-seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads of every contender")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="CORES",
                    help="before each start and load phase, wait until other work on the machine uses at most CORES cores "
                         "(0: don't wait)")
    ap.add_argument("--wait-quiet-max", type=float, default=120.0, metavar="S", help="longest such wait")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of %(default)s")
    ap.add_argument("--md", type=Path, default=None, help="also write the Markdown report here")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (path printed at the end)")
    ap.add_argument("--litserve-server", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fastapi-server", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.litserve_server is not None:  # subprocess modes
        run_litserve_server(args.litserve_server, args.port, args.threads, args.max_batch, args.max_wait_ms)
        return 0
    if args.fastapi_server is not None:
        run_fastapi_server(args.fastapi_server, args.port, args.threads)
        return 0

    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    bad = [n for n in names if n not in CONTENDERS]
    if bad or not names:
        ap.error(f"unknown contender(s) {bad}; choose from {', '.join(CONTENDERS)}")
    if not Path(HEY).exists():
        ap.error("hey (https://github.com/rakyll/hey) is not installed")

    def on_signal(signum, frame):
        _INTERRUPTED.append(signum)
        raise KeyboardInterrupt

    # SIGINT too: a shell that starts this in the background would otherwise leave Ctrl-C / SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmdline = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    t_start = time.perf_counter()
    try:
        _LOAD_AT_START[:] = os.getloadavg()
    except OSError:
        pass
    log_dir = Path(tempfile.mkdtemp(prefix="serve-peers-"))
    results: dict = {n: [] for n in names}
    try:
        artifact = args.artifact
        if artifact is None:
            from edgeopt.demo import run_demo

            print(f"building / loading the product classifier in {args.workdir} (first time: a few minutes) ...",
                  flush=True)
            res = run_demo(args.workdir)
            artifact = next(s.path for s in res.stages if s.name == "int8")
        artifact = Path(artifact).resolve()
        for need in ("manifest.json", "model.onnx"):
            if not (artifact / need).is_file():
                ap.error(f"{artifact} has no {need}: not an edgeopt ONNX artifact")
        print(f"artifact: {artifact}", flush=True)
        edgeopt_flags = edgeopt_log_flags() if "edgeopt" in names else []
        body = log_dir / "body.json"
        body.write_text(json.dumps({"inputs": [LOAD_TEXT]}))

        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}: {', '.join(TITLES[n] for n in rotate(names, rnd))} ...", flush=True)
            for n, r in run_round(rnd, names, artifact, log_dir, args, edgeopt_flags, body).items():
                results[n].append(r)

        md = render(results, names, args, artifact, cmdline, started, time.perf_counter() - t_start, edgeopt_flags)
        print_report(md, args.md)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        cleanup_all()
        if args.keep_logs:
            print(f"server logs: {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
