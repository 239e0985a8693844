"""Lean runtime (`pip install 'edgeopt[serve]'`): install size, server start-up, memory, tokenization and
throughput, compared between environments (e.g. BEFORE = today's full install, AFTER = a `[serve]`-only venv).

Each environment is a virtual environment named on the command line by its bin directory (the one holding
its `edgeopt` executable and `python`). Per environment it measures:

1. install: site-packages size (sum of file sizes, and du-like disk usage), its largest distributions, and
   whether torch / transformers are importable there;
2. start-up: `edgeopt serve ARTIFACT --port P --threads 2` spawned, `/readyz` polled every 20 ms; seconds
   from spawn to the first HTTP answer (port up) and to the first `/readyz` 200; then, after the server
   idles for --idle-s, its RSS (psutil, children included);
3. tokenization: a snippet run by that venv's Python times
   `Preprocessor(load_artifact(ART)).text([t])` on each example text, one text per call (median µs per call),
   plus the seconds to import the preprocessor module and load the tokenizer in a fresh process;
4. load: POST /v1/predict with one text per request (`{"inputs": [text]}`, the example test texts in a fixed
   order, identical for every environment), closed loop at each --concurrency for --duration-s, after
   --warmup-s of unmeasured load: throughput, p50/p90/p99 latency, errors, and the CPU seconds the load
   generator and the server used (the load generator shares the machine: its CPU share is reported).

The environments are interleaved round by round (the order alternates every round) and medians over rounds
are reported, with ratios of every environment to the first one. The load generator is a separate process
(this script in --loadgen mode: asyncio on raw sockets, keep-alive, pre-built requests, so it costs the
server little CPU).

    python benchmarks/lean_runtime.py --env before=/tmp/venv-before/bin --env after=/tmp/venv-after/bin \\
        --artifact /tmp/demo-before/int8 --rounds 3 --json-out /tmp/lean_runtime.json

Needs psutil in the Python that runs this script (not in the measured environments).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from _procs import stop_process  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "examples" / "product-classifier" / "data" / "test.jsonl"


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_texts(path: Path) -> list[str]:
    texts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list) -> Optional[float]:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def env_for(bin_dir: Path) -> dict:
    """The process environment for a measured venv: its bin first on PATH, nothing leaking from ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                            "PYTHONSTARTUP", "PYTHONNOUSERSITE")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def machine_info() -> dict:
    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model, flags = None, set()
        for line in text.splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
        info["cpu_model"] = model
        interesting = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                       "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]
        info["cpu_flags"] = {f: (f in flags) for f in interesting}
        info["cpu_flags_summary"] = " ".join(f for f in interesting if f in flags) or "none of " + " ".join(interesting)
        hv = "hypervisor" in flags
        info["virtualized"] = hv
    except OSError:
        pass
    try:
        info["mem_total_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


# ---------------------------------------------------------------------------------------------
# 1. install size (run by the measured venv's python: it knows its own site-packages)
# ---------------------------------------------------------------------------------------------

INSTALL_SNIPPET = r"""
import importlib.util, json, os, sys, sysconfig
from importlib import metadata
dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
apparent = disk = files = 0
seen = set()
for d in dirs:
    for root, dnames, fnames in os.walk(d):
        for n in fnames + [x for x in dnames if os.path.islink(os.path.join(root, x))]:
            st = os.lstat(os.path.join(root, n))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            apparent += st.st_size; disk += st.st_blocks * 512; files += 1
dists = []
for dist in metadata.distributions():
    size = 0
    for f in dist.files or []:
        p = dist.locate_file(f)
        try:
            size += os.lstat(p).st_size
        except OSError:
            pass
    dists.append((size, dist.metadata["Name"], dist.version))
dists.sort(reverse=True)
def importable(m):
    try:
        return importlib.util.find_spec(m) is not None
    except Exception:
        return False
print(json.dumps({
    "site_packages": dirs, "apparent_bytes": apparent, "disk_bytes": disk, "files": files,
    "distributions": len(dists),
    "largest": [{"name": n, "version": v, "bytes": s} for s, n, v in dists[:12]],
    "versions": {n.lower(): v for s, n, v in dists if n and n.lower() in (
        "edgeopt", "torch", "transformers", "tokenizers", "onnxruntime", "numpy", "fastapi", "uvicorn")},
    "importable": {m: importable(m) for m in ("torch", "transformers", "tokenizers", "onnxruntime")},
    "python": sys.version.split()[0],
}))
"""


def measure_install(bin_dir: Path) -> dict:
    out = subprocess.run([str(bin_dir / "python"), "-c", INSTALL_SNIPPET], env=env_for(bin_dir),
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------------------------
# 3. tokenization (run by the measured venv's python)
# ---------------------------------------------------------------------------------------------

TOKENIZE_SNIPPET = r"""
import hashlib, json, sys, time
t0 = time.perf_counter()
from edgeopt.artifact import load_artifact
from edgeopt.models.preprocess import Preprocessor
t1 = time.perf_counter()
art = load_artifact(sys.argv[1])
pre = Preprocessor(art)
t2 = time.perf_counter()
texts = [json.loads(l)["text"] for l in open(sys.argv[2]) if l.strip()]
passes = int(sys.argv[3])
for t in texts[:20]:
    pre.text([t])
lat = []
for _ in range(passes):
    for t in texts:
        a = time.perf_counter()
        pre.text([t])
        lat.append(time.perf_counter() - a)
lat.sort()
mods = sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules)
h = hashlib.sha256()
# same tokenization before/after -> same fingerprint: every text alone (unpadded), a padded batch of 8, and a
# text far over max_length (truncation)
probes = [[t] for t in texts] + [texts[:8], [" ".join(texts[:40])]]
for batch in probes:
    enc = pre.text(batch)
    for k in sorted(enc):
        h.update(k.encode()); h.update(repr(enc[k].tolist()).encode())
enc = pre.text([texts[0]])
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "n": len(lat),
                  "median_us": lat[len(lat) // 2] * 1e6, "p90_us": lat[int(len(lat) * 0.9)] * 1e6,
                  "mean_us": sum(lat) / len(lat) * 1e6,
                  "modules_loaded": mods,
                  "first_input_ids": enc["input_ids"].tolist()[0][:12] if "input_ids" in enc else None,
                  "encoding_sha256": h.hexdigest()[:16], "inputs": sorted(enc),
                  "tokenizer_class": type(getattr(pre, "_tokenizer", None)).__name__}))
"""


def measure_tokenization(bin_dir: Path, artifact: Path, data: Path, passes: int) -> dict:
    out = subprocess.run([str(bin_dir / "python"), "-c", TOKENIZE_SNIPPET, str(artifact), str(data), str(passes)],
                         env=env_for(bin_dir), capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# 2. server start-up and idle RSS
# ---------------------------------------------------------------------------------------------

def http_get_status(port: int, path: str, timeout: float = 1.0) -> Optional[int]:
    """Status of GET path, or None when nothing answers (connection refused / reset / timeout)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b" ", 2)
            return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None
    except (OSError, ValueError):
        return None


def rss_bytes(pid: int) -> int:
    import psutil

    p = psutil.Process(pid)
    procs = [p] + p.children(recursive=True)
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds, idle CPU seconds) of the whole machine so far, from /proc/stat (steal counted busy)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return (float("nan"), float("nan"))
    hz = os.sysconf("SC_CLK_TCK")
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    busy = sum(f[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / hz, idle / hz


def cpu_seconds(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    total = 0.0
    for q in [p] + p.children(recursive=True):
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class Server:
    def __init__(self, name: str, bin_dir: Path, artifact: Path, threads: int, extra: list[str], log_dir: Path,
                 round_no: int):
        self.port = free_port()
        self.cmd = [str(bin_dir / "edgeopt"), "serve", str(artifact), "--port", str(self.port),
                    "--threads", str(threads), *extra]
        self.log_path = log_dir / f"{name}-round{round_no}.log"
        self._log = open(self.log_path, "w")
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env_for(bin_dir),
                                     cwd=tempfile.gettempdir())

    def wait_ready(self, timeout: float, poll_s: float = 0.02) -> dict:
        first_answer = None
        deadline = self.t_spawn + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            status = http_get_status(self.port, "/readyz")
            now = time.perf_counter()
            if status is not None and first_answer is None:
                first_answer = now - self.t_spawn
            if status == 200:
                return {"listen_s": first_answer, "ready_s": now - self.t_spawn}
            time.sleep(poll_s)
        raise RuntimeError(f"server not ready after {timeout} s; log {self.log_path}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


# ---------------------------------------------------------------------------------------------
# 4. load generator (separate process: this script with --loadgen)
# ---------------------------------------------------------------------------------------------

def build_requests(texts: list[str], port: int, path: str = "/v1/predict") -> list[bytes]:
    reqs = []
    for t in texts:
        body = json.dumps({"inputs": [t]}).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
        reqs.append(head + body)
    return reqs


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _load(port: int, reqs: list[bytes], concurrency: int, duration_s: float, warmup_s: float,
                timeout_s: float) -> dict:
    lat: list[float] = []
    errors: dict[str, int] = {}
    t_warm_end = time.perf_counter() + warmup_s
    t_end = t_warm_end + duration_s
    n_done = [0]

    async def worker(i: int) -> None:
        reader = writer = None
        k = i
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            req = reqs[k % len(reqs)]
            k += concurrency
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t0 = time.perf_counter()
                writer.write(req)
                status = await asyncio.wait_for(_read_response(reader), timeout_s)
                t1 = time.perf_counter()
                if t0 >= t_warm_end:
                    if status == 200:
                        lat.append(t1 - t0)
                        n_done[0] += 1
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as e:
                if time.perf_counter() >= t_warm_end:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    # the measured window starts after warm-up; a request counts when it started inside the window
    await asyncio.sleep(max(0.0, t_warm_end - time.perf_counter()))
    c0 = time.process_time()
    w0 = time.perf_counter()
    await asyncio.gather(*tasks)
    w1 = time.perf_counter()
    c1 = time.process_time()
    elapsed = w1 - w0
    ms = [x * 1000 for x in lat]
    return {"concurrency": concurrency, "requests": n_done[0], "elapsed_s": elapsed,
            "rps": n_done[0] / elapsed if elapsed > 0 else 0.0,
            "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
            "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
            "errors": errors, "loadgen_cpu_s": c1 - c0}


def loadgen_main(args) -> None:
    texts = load_texts(Path(args.data))
    reqs = build_requests(texts, args.port)
    res = asyncio.run(_load(args.port, reqs, args.concurrency, args.duration_s, args.warmup_s, args.timeout_s))
    print(json.dumps(res))


def run_load(port: int, data: Path, concurrency: int, duration_s: float, warmup_s: float, server_pid: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--loadgen", "--port", str(port), "--data", str(data),
           "--concurrency", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    lg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # server CPU over (roughly) the measured window: sample after the warm-up, and at the end
    time.sleep(warmup_s + 0.3)  # interpreter start-up of the load generator is ~0.1-0.3 s
    s0, m0, w0 = cpu_seconds(server_pid), machine_busy(), time.perf_counter()
    out, err = lg.communicate(timeout=warmup_s + duration_s + 120)
    s1, m1, w1 = cpu_seconds(server_pid), machine_busy(), time.perf_counter()
    if lg.returncode != 0:
        raise RuntimeError(f"load generator failed: {err[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["server_cpu_util"] = (s1 - s0) / (w1 - w0) if w1 > w0 else None  # cores busy, e.g. 1.8 of 2
    res["loadgen_cpu_util"] = res["loadgen_cpu_s"] / res["elapsed_s"] if res["elapsed_s"] else None
    if w1 > w0:
        # everything else running on the machine meanwhile (other users' jobs): a noise flag
        res["machine_cpu_util"] = (m1[0] - m0[0]) / (w1 - w0)
        res["other_cpu_util"] = max(0.0, res["machine_cpu_util"] - (res["server_cpu_util"] or 0)
                                    - (res["loadgen_cpu_util"] or 0))
    return res


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------

def one_round(name: str, bin_dir: Path, args, round_no: int, log_dir: Path) -> dict:
    r: dict = {"round": round_no}
    srv = Server(name, bin_dir, args.artifact, args.threads, args.serve_arg, log_dir, round_no)
    try:
        r.update(srv.wait_ready(args.ready_timeout_s))
        time.sleep(args.idle_s)
        r["idle_rss_bytes"] = rss_bytes(srv.proc.pid)
        r["load"] = {}
        for c in args.concurrency:
            r["load"][str(c)] = run_load(srv.port, args.data, c, args.duration_s, args.warmup_s, srv.proc.pid)
        r["rss_after_load_bytes"] = rss_bytes(srv.proc.pid)
    finally:
        srv.stop()
    r["server_cmd"] = srv.cmd
    r["tokenize"] = measure_tokenization(bin_dir, args.artifact, args.data, args.tok_passes)
    return r


def summarize(rounds: list[dict], concurrency: list[int]) -> dict:
    s: dict = {
        "ready_s": median([r["ready_s"] for r in rounds]),
        "listen_s": median([r["listen_s"] for r in rounds]),
        "idle_rss_mib": median([r["idle_rss_bytes"] / 2**20 for r in rounds]),
        "rss_after_load_mib": median([r["rss_after_load_bytes"] / 2**20 for r in rounds]),
        "tokenize_median_us": median([r["tokenize"].get("median_us") for r in rounds]),
        "tokenizer_load_s": median([r["tokenize"].get("load_s") for r in rounds]),
        "preprocess_import_s": median([r["tokenize"].get("import_s") for r in rounds]),
        "encoding_sha256": sorted({r["tokenize"].get("encoding_sha256") or "error" for r in rounds}),
        "load": {},
    }
    for c in concurrency:
        ls = [r["load"][str(c)] for r in rounds]
        s["load"][str(c)] = {k: median([x[k] for x in ls]) for k in
                             ("rps", "p50_ms", "p90_ms", "p99_ms", "server_cpu_util", "loadgen_cpu_util",
                              "other_cpu_util")}
        s["load"][str(c)]["errors"] = sum(sum(x["errors"].values()) for x in ls)
        s["load"][str(c)]["rps_per_round"] = [round(x["rps"], 1) for x in ls]
    return s


def fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(envs: list[str], results: dict, concurrency: list[int]) -> str:
    base = envs[0]
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, getter, spec: str, ratio: bool = True):
        vals = [getter(results[e]) for e in envs]
        cells = [fmt(v, spec) for v in vals]
        if ratio and len(envs) > 1:
            b = vals[0]
            for v in vals[1:]:
                cells.append("–" if (v is None or not b) else f"{v / b:.2f}×")
        elif len(envs) > 1:
            cells += [""] * (len(envs) - 1)
        rows.append((label, cells))

    if all(results[e].get("install") for e in envs):
        add("site-packages, MB (file sizes)", lambda r: r["install"]["apparent_bytes"] / 1e6, ".1f")
        add("site-packages, MB (du, disk)", lambda r: r["install"]["disk_bytes"] / 1e6, ".1f")
        add("distributions installed", lambda r: r["install"]["distributions"], "d")
        rows.append(("torch / transformers importable",
                     [("yes" if r["install"]["importable"]["torch"] else "no") + " / "
                      + ("yes" if r["install"]["importable"]["transformers"] else "no")
                      for r in (results[e] for e in envs)] + [""] * (len(envs) - 1)))
    rows.append(("tokenization fingerprint", [",".join(results[e]["summary"]["encoding_sha256"]) for e in envs]
                 + [("same" if results[e]["summary"]["encoding_sha256"] == results[base]["summary"]["encoding_sha256"]
                     else "DIFFERS") for e in envs[1:]]))
    add("serve: spawn -> port answers, s", lambda r: r["summary"]["listen_s"], ".2f")
    add("serve: spawn -> /readyz 200, s", lambda r: r["summary"]["ready_s"], ".2f")
    add("serve: idle RSS, MiB", lambda r: r["summary"]["idle_rss_mib"], ".0f")
    add("serve: RSS after load, MiB", lambda r: r["summary"]["rss_after_load_mib"], ".0f")
    add("tokenize 1 text, median µs", lambda r: r["summary"]["tokenize_median_us"], ".1f")
    add("import + tokenizer load, s", lambda r: (r["summary"]["preprocess_import_s"] or 0)
        + (r["summary"]["tokenizer_load_s"] or 0), ".2f")
    for c in concurrency:
        add(f"c={c}: throughput, req/s", lambda r, c=c: r["summary"]["load"][str(c)]["rps"], ".1f")
        add(f"c={c}: p50, ms", lambda r, c=c: r["summary"]["load"][str(c)]["p50_ms"], ".2f")
        add(f"c={c}: p99, ms", lambda r, c=c: r["summary"]["load"][str(c)]["p99_ms"], ".2f")
        add(f"c={c}: errors", lambda r, c=c: r["summary"]["load"][str(c)]["errors"], "d", ratio=False)
        add(f"c={c}: server CPU, cores", lambda r, c=c: r["summary"]["load"][str(c)]["server_cpu_util"], ".2f",
            ratio=False)
        add(f"c={c}: load generator CPU, cores", lambda r, c=c: r["summary"]["load"][str(c)]["loadgen_cpu_util"],
            ".2f", ratio=False)
        add(f"c={c}: other processes' CPU, cores", lambda r, c=c: r["summary"]["load"][str(c)]["other_cpu_util"],
            ".2f", ratio=False)
    header = ["metric (median over rounds)"] + envs + [f"{e}/{base}" for e in envs[1:]]
    widths = [max(len(header[i]), *(len(r[1][i - 1]) if i else len(r[0]) for r in rows)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(widths[i]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)),
             "  ".join("-" * w for w in widths)]
    for label, cells in rows:
        lines.append("  ".join([label.ljust(widths[0])] + [c.rjust(widths[i + 1]) for i, c in enumerate(cells)]))
    return "\n".join(lines)


def parse_env(s: str, need_edgeopt: bool = True) -> tuple[str, Path]:
    name, sep, path = s.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--env {s!r}: expected NAME=PATH (a venv's bin directory, or the venv)")
    p = Path(path).expanduser().absolute()
    if not (p / "python").exists() and (p / "bin" / "python").exists():
        p = p / "bin"
    if not (p / "python").exists() or (need_edgeopt and not (p / "edgeopt").exists()):
        raise argparse.ArgumentTypeError(f"{s!r}: {p} holds no {'edgeopt and ' if need_edgeopt else ''}python executable")
    return name, p


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", action="append", type=parse_env, default=[],
                    help="NAME=VENV_BIN_DIR (repeatable; the first is the baseline of the ratios)")
    ap.add_argument("--size-only", action="append", type=lambda v: parse_env(v, need_edgeopt=False), default=[],
                    metavar="NAME=VENV_BIN_DIR",
                    help="only measure this venv's site-packages (e.g. an empty venv, or the core install)")
    ap.add_argument("--artifact", type=lambda p: Path(p).expanduser().absolute(), help="artifact every env serves")
    ap.add_argument("--data", type=lambda p: Path(p).expanduser().absolute(), default=DEFAULT_DATA,
                    help="JSONL with a 'text' field: request bodies and tokenization inputs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="--threads of edgeopt serve")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument to edgeopt serve (repeatable)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--duration-s", type=float, default=15.0, help="measured seconds per concurrency")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured load before each measurement")
    ap.add_argument("--idle-s", type=float, default=2.0, help="idle time after /readyz before reading RSS")
    ap.add_argument("--ready-timeout-s", type=float, default=300.0)
    ap.add_argument("--tok-passes", type=int, default=5, help="passes over the texts for the tokenization timing")
    ap.add_argument("--skip-install", action="store_true", help="skip the site-packages measurement")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--log-dir", type=Path, help="server logs (default: a temporary folder)")
    # load generator mode (internal)
    ap.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--timeout-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.loadgen:
        args.concurrency = args.concurrency[0]
        return loadgen_main(args)
    if (not args.env or args.artifact is None) and not args.size_only:
        ap.error("give at least one --env NAME=PATH and --artifact (or --size-only NAME=PATH)")
    sizes = {}
    for n, p in args.size_only:
        i = measure_install(p)
        sizes[n] = {"bin": str(p), "install": i}
        print(f"[{n}] site-packages {i['apparent_bytes'] / 1e6:.1f} MB ({i['disk_bytes'] / 1e6:.1f} MB on disk), "
              f"{i['distributions']} distributions, importable: {i['importable']}; largest: "
              + ", ".join(f"{d['name']} {d['bytes'] / 1e6:.1f}" for d in i["largest"][:6]), flush=True)
    if not args.env:
        if args.json_out:
            args.json_out.write_text(json.dumps({"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                                                 "machine": machine_info(), "size_only": sizes}, indent=2))
        return
    if args.artifact is None:
        ap.error("--env needs --artifact")
    names = [n for n, _ in args.env]
    if len(set(names)) != len(names):
        ap.error("environment names must differ")
    if not (args.artifact / "manifest.json").is_file():
        ap.error(f"--artifact {args.artifact}: no manifest.json there")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="lean_runtime-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results: dict = {n: {"bin": str(p), "rounds": []} for n, p in args.env}
    for n, p in args.env:
        if not args.skip_install:
            results[n]["install"] = measure_install(p)
            i = results[n]["install"]
            print(f"[{n}] site-packages {i['apparent_bytes'] / 1e6:.1f} MB ({i['disk_bytes'] / 1e6:.1f} MB on disk), "
                  f"{i['distributions']} distributions, importable: {i['importable']}", file=sys.stderr, flush=True)
    for rnd in range(args.rounds):
        order = list(args.env) if rnd % 2 == 0 else list(reversed(args.env))
        for n, p in order:
            r = one_round(n, p, args, rnd, log_dir)
            results[n]["rounds"].append(r)
            loads = ", ".join(f"c={c}: {r['load'][str(c)]['rps']:.1f} req/s p50 {r['load'][str(c)]['p50_ms']:.1f} ms"
                              for c in args.concurrency)
            print(f"[round {rnd + 1}/{args.rounds}] {n}: ready {r['ready_s']:.2f} s, idle RSS "
                  f"{r['idle_rss_bytes'] / 2**20:.0f} MiB, tokenize {fmt(r['tokenize'].get('median_us'), '.1f')} µs, "
                  f"{loads}", file=sys.stderr, flush=True)
            if "error" in r["tokenize"]:
                print(f"    tokenize error: {r['tokenize']['error']}", file=sys.stderr)
    for n in names:
        results[n]["summary"] = summarize(results[n]["rounds"], args.concurrency)
    text = table(names, results, args.concurrency)
    print(text)
    if args.json_out:
        doc = {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "settings": {"artifact": str(args.artifact), "data": str(args.data), "rounds": args.rounds,
                         "threads": args.threads, "serve_args": args.serve_arg, "concurrency": args.concurrency,
                         "duration_s": args.duration_s, "warmup_s": args.warmup_s, "idle_s": args.idle_s,
                         "tok_passes": args.tok_passes, "log_dir": str(log_dir)},
            "baseline": names[0],
            "environments": results,
            "size_only": sizes,
            "table": text,
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
