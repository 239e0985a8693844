"""`edgeopt bench --url`: an HTTP load generator for `edgeopt serve` (or any server with the same API).

The client is a lean HTTP/1.1 keep-alive client on raw asyncio streams (requests are bytes built once
per payload; responses are parsed by hand: Content-Length, chunked, or read-to-close bodies), so that
its own CPU cost per request is tens of microseconds and the server, not the client, is what is
measured. Two ways to load the server:

* closed loop (default): ``concurrency`` connections, each sending its next request when the last one
  was answered. Latency is per request; a slow server slows the load down with it.
* open loop (``rate``): requests are due on a fixed schedule (``rate`` per second) whatever the
  answers; connections are opened as needed, up to ``max_connections`` (``concurrency`` does not
  apply). Latency runs from each request's *scheduled* time, so time spent waiting for a free
  connection counts (no coordinated omission), and so does the per-request ``timeout_s``.

``processes`` splits the work (connections, requests, or the schedule) over that many client
processes (spawned, each with its own event loop); their results are merged. Every process measures
its CPU time over its wall time, and an open-loop process how far its sends fell behind the schedule:
when the client itself may have been the limit, the report says so (``client_limited``, ``warnings``).

Bounded by request count and/or duration; reports p50/p90/p99 latency, throughput and errors in the
same table as the in-process bench, plus accuracy when the data is labelled.
"""
from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, InputError, StageError
from .core import BenchConfig, BenchReport, BenchRow, machine_info

# client-bottleneck thresholds (see client_limits)
CPU_LIMIT = 0.8  # fraction of one core used by a client process's event loop
RATE_TOLERANCE = 0.95  # achieved send rate / asked rate
LAG_SLACK_S = 0.01  # sends this late (or less) at the end of the schedule are timer granularity, not a limit
_HEAD_LIMIT = 1 << 20  # largest response head (status line + headers) accepted
_TIMEOUT = (TimeoutError, asyncio.TimeoutError)  # the same class from Python 3.11 on


class LoadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    concurrency: int = Field(8, ge=1, le=4096)  # closed loop: connections (split over the processes)
    requests: Optional[int] = Field(None, ge=1)
    duration_s: Optional[float] = Field(None, gt=0)
    data: Optional[str] = None
    items_per_request: int = Field(1, ge=1)
    api_key_env: Optional[str] = None
    timeout_s: float = Field(30.0, gt=0)  # per request; in open loop counted from the scheduled time
    warmup: int = Field(4, ge=0)
    rate: Optional[float] = Field(None, gt=0)  # open loop: requests per second over all processes
    processes: int = Field(1, ge=1, le=256)
    max_connections: int = Field(256, ge=1, le=65536)  # open loop: cap on connections over all processes


class LoadReport(BenchReport):
    """A BenchReport (one row) plus what the load generator knows about itself."""

    mode: Literal["closed-loop", "open-loop"] = "closed-loop"
    rate: Optional[float] = None  # asked requests/s (open loop)
    send_rate: Optional[float] = None  # open loop: requests/s the client issued (due requests released to connections)
    processes: int = 1
    connections: int = 0  # TCP connections opened by the timed run (reconnects included)
    client_cpu: list[float] = Field(default_factory=list)  # per client process: CPU s / wall s of its event loop
    client_limited: bool = False  # the client, not the server, may have been the limit
    warnings: list[str] = Field(default_factory=list)

    def describe(self) -> str:
        """One line on how the load was made, for under the table."""
        row = self.rows[0]
        cpu = ", ".join(f"{c:.2f}" for c in self.client_cpu)
        procs = f"{self.processes} client process{'es' if self.processes > 1 else ''} (CPU {cpu} of a core)"
        if self.mode == "open-loop":
            return (f"load: open loop at {self.rate:g} requests/s (issued at {self.send_rate:.1f}/s), "
                    f"{row.concurrency} connections at most at once, {self.connections} opened; {procs}")
        return f"load: closed loop, {row.concurrency} connections ({self.connections} opened); {procs}"


def client_limits(cpu: list[float], rate: Optional[float] = None, send_rate: Optional[float] = None,
                  end_lag_s: float = 0.0) -> list[str]:
    """Why the client itself may have been the bottleneck (empty: it was not).

    ``cpu``: per client process, the fraction of one core its event loop used over the timed run.
    ``rate``/``send_rate``: asked and achieved requests/s (open loop); ``end_lag_s``: how late the last
    scheduled send went out. A process above CPU_LIMIT of a core, or sends short of RATE_TOLERANCE of
    the asked rate (and more than LAG_SLACK_S behind at the end), marks the result."""
    hint = "the client, not the server, may be the limit; add --processes or run it from another machine"
    out = [f"the load generator used {c:.2f} of a CPU core in process {i + 1}: {hint}"
           for i, c in enumerate(cpu) if c > CPU_LIMIT]
    if rate and send_rate is not None and send_rate < RATE_TOLERANCE * rate and end_lag_s > LAG_SLACK_S:
        out.append(f"the load generator fell behind its schedule: it sent {send_rate:.1f} requests/s of the "
                   f"{rate:g} asked (the last send was {end_lag_s * 1000:.0f} ms late): {hint}")
    return out


# ---------------------------------------------------------------------------------------------
# the HTTP/1.1 client
# ---------------------------------------------------------------------------------------------

class _ProtocolError(Exception):
    pass


class _Conn:
    __slots__ = ("r", "w")

    def __init__(self):
        self.r: Optional[asyncio.StreamReader] = None
        self.w: Optional[asyncio.StreamWriter] = None

    def close(self) -> None:
        if self.w is not None:
            try:
                self.w.close()
            except Exception:  # already torn down
                pass
        self.r = self.w = None


def _header(lower: bytes, name: bytes) -> Optional[bytes]:
    """The value of header ``name`` (b'\\r\\ncontent-length:') in a lower-cased response head."""
    i = lower.find(name)
    if i < 0:
        return None
    i += len(name)
    return lower[i:lower.find(b"\r\n", i)].strip()


class _Client:
    """Keep-alive HTTP/1.1 exchanges with one server (host is an address: no resolving per connection)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.opened = 0

    async def connect(self, conn: _Conn) -> None:
        conn.r, conn.w = await asyncio.open_connection(self.host, self.port, limit=_HEAD_LIMIT)
        self.opened += 1

    async def exchange(self, conn: _Conn, req: bytes) -> tuple[int, bytes]:
        """Send ``req`` on ``conn`` (reconnecting when the server closed it) and read the answer."""
        if conn.w is None or conn.r.at_eof():
            conn.close()
            await self.connect(conn)
        r = conn.r
        conn.w.write(req)
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            if head[:7] != b"HTTP/1." or len(head) < 12:
                raise _ProtocolError("not an HTTP/1.x response")
            status = int(head[9:12])
            if status >= 200 or status == 101:
                break  # 1xx interim answers (100 Continue) come before the real one
        lower = head.lower()
        conn_hdr = _header(lower, b"\r\nconnection:")
        v10 = head[7:8] == b"0"  # HTTP/1.0: the connection closes unless the server says keep-alive
        close = v10 if conn_hdr is None else (b"close" in conn_hdr or (v10 and b"keep-alive" not in conn_hdr))
        te = _header(lower, b"\r\ntransfer-encoding:")
        if status in (204, 304):
            body = b""
        elif te is not None and b"chunked" in te:
            parts = []
            while True:
                line = await r.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await r.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                chunk = await r.readexactly(size + 2)
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            cl = _header(lower, b"\r\ncontent-length:")
            if cl is not None:
                n = int(cl)
                body = await r.readexactly(n) if n else b""
            else:  # no length: the body runs to the end of the connection
                body = await r.read()
                close = True
        if close:
            conn.close()
        return status, body


# what one exchange may raise: each is counted as an error of its kind, never a crash
_EXCHANGE_ERRORS = (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    _ProtocolError, ValueError)


async def _within(delay: float, aw):
    """``await aw`` for at most ``delay`` seconds (TimeoutError after that)."""
    if hasattr(asyncio, "timeout"):  # 3.11+: no extra task
        async with asyncio.timeout(delay):
            return await aw
    return await asyncio.wait_for(aw, delay)


def _error_kind(e: BaseException) -> str:
    if isinstance(e, _TIMEOUT):
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed"  # the server closed the connection before a whole answer
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, (_ProtocolError, ValueError, asyncio.LimitOverrunError)):
        return "protocol"
    return type(e).__name__


# ---------------------------------------------------------------------------------------------
# one client process's share of the run
# ---------------------------------------------------------------------------------------------

@dataclass
class _Job:
    host: str  # an address (resolved once by the parent)
    port: int
    reqs: list[bytes]  # one request per payload group
    truth: Optional[list[list[str]]]  # per group: the true labels (accuracy), or None
    index: int  # this process, 0..nproc-1
    nproc: int
    timeout_s: float
    duration_s: Optional[float]
    rate: Optional[float] = None  # open loop: total asked rate (all processes)
    schedule: int = 0  # open loop: total requests on the schedule (all processes); this one takes index::nproc
    connections: int = 1  # closed loop: this process's connections; open loop: its cap
    budget: Optional[int] = None  # closed loop: this process's request budget


@dataclass
class _Result:
    lat_ms: array = field(default_factory=lambda: array("d"))
    status: Counter = field(default_factory=Counter)
    correct: int = 0
    scored: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    opened: int = 0
    peak_connections: int = 0
    sent_on_schedule: int = 0  # open loop: requests the dispatcher released
    last_send_s: float = 0.0  # open loop: when the last one was released, from the common start
    end_lag_s: float = 0.0  # open loop: how late that was
    waited: int = 0  # open loop: requests that found every connection (up to the cap) busy


class _Runner:
    def __init__(self, job: _Job):
        self.job = job
        self.client = _Client(job.host, job.port)
        self.res = _Result()
        self.conns: list[_Conn] = []

    async def preconnect(self) -> None:
        """Closed loop: open this process's connections before the clock starts."""
        if self.job.rate is None:
            for _ in range(self.job.connections):
                c = _Conn()
                await _within(self.job.timeout_s, self.client.connect(c))
                self.conns.append(c)

    async def one(self, conn: _Conn, k: int, t0: float) -> None:
        """Request k (payload k % groups), timed from t0 (its send or scheduled time)."""
        job, res = self.job, self.res
        g = k % len(job.reqs)
        left = t0 + job.timeout_s - time.perf_counter()
        if left <= 0:  # open loop: it waited for a connection past its timeout, and is never sent
            res.lat_ms.append((time.perf_counter() - t0) * 1000)
            res.status["timeout"] += 1
            return
        try:
            status, body = await _within(left, self.client.exchange(conn, job.reqs[g]))
        except _EXCHANGE_ERRORS as e:
            conn.close()
            res.lat_ms.append((time.perf_counter() - t0) * 1000)
            res.status[_error_kind(e)] += 1
            return
        res.lat_ms.append((time.perf_counter() - t0) * 1000)
        res.status[status] += 1
        if status == 200 and job.truth is not None:
            try:
                preds = json.loads(body).get("predictions", [])
                for want, p in zip(job.truth[g], preds):
                    res.scored += 1
                    res.correct += int(want == p["label"])
            except (ValueError, TypeError, KeyError, AttributeError):
                pass

    async def run(self, start: float) -> _Result:
        """The timed run from ``start`` (perf_counter time, common to all processes)."""
        delay = start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        gc.freeze()  # what exists now is never collected again: cheaper, shorter pauses during the run
        cpu0 = time.thread_time()
        try:
            if self.job.rate is None:
                await self._closed(start)
            else:
                await self._open(start)
        finally:
            gc.unfreeze()
        res = self.res
        res.wall_s = time.perf_counter() - start
        res.cpu_s = time.thread_time() - cpu0
        res.opened = self.client.opened
        for c in self.conns:
            c.close()
        return res

    async def _closed(self, start: float) -> None:
        job = self.job
        deadline = start + job.duration_s if job.duration_s else None
        budget = job.budget
        n = 0

        async def worker(conn: _Conn):
            nonlocal n
            while (budget is None or n < budget) and (deadline is None or time.perf_counter() < deadline):
                k = job.index + job.nproc * n
                n += 1
                await self.one(conn, k, time.perf_counter())

        self.res.peak_connections = len(self.conns)
        await asyncio.gather(*(worker(c) for c in self.conns))

    async def _open(self, start: float) -> None:
        job, res = self.job, self.res
        q: asyncio.Queue = asyncio.Queue()
        idle = 0
        workers: list[asyncio.Task] = []

        async def worker():
            nonlocal idle
            conn = _Conn()
            self.conns.append(conn)
            while True:
                idle += 1
                item = await q.get()
                idle -= 1
                if item is None:
                    return
                await self.one(conn, item, start + item / job.rate)

        lag = 0.0
        for k in range(job.index, job.schedule, job.nproc):
            due = start + k / job.rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.perf_counter()
            lag = now - due
            q.put_nowait(k)
            res.sent_on_schedule += 1
            if q.qsize() > idle:
                if len(workers) < job.connections:
                    workers.append(asyncio.create_task(worker()))
                else:
                    res.waited += 1
        res.last_send_s = time.perf_counter() - start
        res.end_lag_s = lag
        res.peak_connections = len(workers)
        for _ in workers:
            q.put_nowait(None)
        await asyncio.gather(*workers)


def _child_main(pipe, job: _Job) -> None:
    """A client process: connect, say ready, wait for the common start time, run, send the result."""
    try:
        asyncio.run(_child(pipe, job))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent as one message
        try:
            pipe.send(("error", _error_kind(e), f"{type(e).__name__}: {e}"))
        except Exception:
            pass
    finally:
        pipe.close()


async def _child(pipe, job: _Job) -> None:
    runner = _Runner(job)
    await runner.preconnect()
    pipe.send(("ready",))
    start_wall = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    start = time.perf_counter() + (start_wall - time.time())
    pipe.send(("done", await runner.run(start)))


# ---------------------------------------------------------------------------------------------
# the load test
# ---------------------------------------------------------------------------------------------

def _payloads(cfg: LoadConfig, kind: Optional[str]):
    from ..data import load_dataset
    from ..metrics import SAMPLE_TEXTS

    if kind not in ("text", None):
        raise ConfigError("the load generator sends text inputs; this server's model takes images")
    if cfg.data:
        ds = load_dataset(cfg.data, kind="text")
        texts, labels = list(ds.samples), ds.labels
    else:
        texts, labels = list(SAMPLE_TEXTS), None
    k = cfg.items_per_request
    groups = [list(range(i, i + k)) for i in range(0, len(texts) - k + 1, k)] or [list(range(len(texts)))]
    return texts, labels, groups, (cfg.data or "built-in sample sentences")


def _check(cfg: LoadConfig) -> tuple[str, int, str]:
    """Refuse bad combinations of options, one line each; returns (host, port, path prefix) of the URL."""
    u = urlsplit(cfg.url)
    if u.scheme == "https":
        raise ConfigError(f"--url {cfg.url}: the load generator speaks plain http:// only; give the server's "
                          "http:// address (not the TLS proxy in front of it)")
    if u.scheme != "http" or not u.hostname:
        raise ConfigError(f"--url {cfg.url}: give the server as http://HOST:PORT")
    try:
        port = u.port or 80
    except ValueError:
        raise ConfigError(f"--url {cfg.url}: the port is not a number in 1..65535") from None
    given = cfg.model_fields_set
    if cfg.rate is not None:
        if "concurrency" in given:
            raise ConfigError("--concurrency is for the closed loop; with --rate connections are opened as needed, "
                              "up to --max-connections (default 256)")
        if cfg.processes > cfg.max_connections:
            raise ConfigError(f"--processes {cfg.processes} is more than --max-connections {cfg.max_connections}: "
                              "each client process needs at least one connection; lower --processes")
    else:
        if "max_connections" in given:
            raise ConfigError("--max-connections applies with --rate (open loop); in the closed loop --concurrency "
                              "is the number of connections")
        if cfg.processes > cfg.concurrency:
            raise ConfigError(f"--processes {cfg.processes} is more than --concurrency {cfg.concurrency}: each "
                              "client process needs at least one connection; lower --processes or raise --concurrency")
    if cfg.requests is not None and cfg.requests < cfg.processes:
        raise ConfigError(f"--requests {cfg.requests} is fewer than --processes {cfg.processes}: give each client "
                          "process at least one request")
    return u.hostname, port, u.path.rstrip("/")


def _split(n: int, parts: int, i: int) -> int:
    return n // parts + (1 if i < n % parts else 0)


def _why(e: BaseException) -> str:
    """A connection failure in words (no exception class names in a user's error line)."""
    import socket

    if isinstance(e, _TIMEOUT):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"unknown host: {e.strerror}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or "the connection failed"


def load_test(cfg: LoadConfig) -> LoadReport:
    """Load-test the server at ``cfg.url``; see the module docstring."""
    host, port, prefix = _check(cfg)
    headers = f"Host: {urlsplit(cfg.url).netloc}\r\nUser-Agent: edgeopt-bench\r\n"
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {cfg.api_key_env}: that environment variable is empty or unset")
        headers += f"Authorization: Bearer {key}\r\n"
    base = cfg.url.rstrip("/")

    async def probe():
        """GET /v1/model (also: the address to connect to from now on), then the warm-up requests."""
        conn = _Conn()
        try:
            conn.r, conn.w = await asyncio.wait_for(asyncio.open_connection(host, port, limit=_HEAD_LIMIT),
                                                    cfg.timeout_s)
            addr = conn.w.get_extra_info("peername")[0]
            status, body = await _within(cfg.timeout_s, _Client(addr, port).exchange(
                conn, f"GET {prefix}/v1/model HTTP/1.1\r\n{headers}\r\n".encode()))
        except _EXCHANGE_ERRORS as e:
            conn.close()
            why = _why(e)
            raise InputError(f"{base}/v1/model: cannot reach the server ({why}); is `edgeopt serve` running there?") from e
        try:
            info = json.loads(body) if status == 200 else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            conn.close()
            text = " ".join(body[:200].decode("utf-8", "replace").split())
            hint = "; check --api-key-env" if status == 401 else ""
            raise InputError(f"{base}/v1/model answered HTTP {status} ({text}), not the model description of "
                             f"`edgeopt serve`{hint}")
        kind = (info.get("preprocessing") or {}).get("kind")
        texts, labels, groups, source = _payloads(cfg, kind)
        reqs = []
        for g in groups:
            body = json.dumps({"inputs": [texts[i] for i in g]}, ensure_ascii=False, separators=(",", ":")).encode()
            reqs.append(f"POST {prefix}/v1/predict HTTP/1.1\r\n{headers}Content-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        client = _Client(addr, port)
        for req in reqs[: cfg.warmup]:
            try:
                await _within(cfg.timeout_s, client.exchange(conn, req))
            except _EXCHANGE_ERRORS:
                conn.close()
        conn.close()
        truth = [[str(labels[i]) for i in g] for g in groups] if labels is not None and info.get("labels") else None
        return info, addr, reqs, truth, source

    n = cfg.processes
    total = cfg.requests if cfg.requests is not None else (None if cfg.duration_s else 200)

    def jobs(addr, reqs, truth) -> list[_Job]:
        out = []
        for i in range(n):
            job = _Job(host=addr, port=port, reqs=reqs, truth=truth, index=i, nproc=n, timeout_s=cfg.timeout_s,
                       duration_s=cfg.duration_s)
            if cfg.rate is None:
                job.connections = _split(cfg.concurrency, n, i)
                job.budget = None if total is None else _split(total, n, i)
            else:
                sched = math.ceil(cfg.rate * cfg.duration_s - 1e-9) if cfg.duration_s else None
                job.rate = cfg.rate
                job.schedule = min(x for x in (sched, total) if x is not None)
                job.connections = _split(cfg.max_connections, n, i)
            out.append(job)
        return out

    if n == 1:
        async def single():
            info, addr, reqs, truth, source = await probe()
            runner = _Runner(jobs(addr, reqs, truth)[0])
            try:
                await runner.preconnect()
            except _EXCHANGE_ERRORS as e:
                raise InputError(f"{base}: cannot open a connection ({type(e).__name__}: {e})") from e
            return info, source, [await runner.run(time.perf_counter())]

        info, source, results = asyncio.run(single())
    else:
        info, addr, reqs, truth, source = asyncio.run(probe())
        results = _run_processes(jobs(addr, reqs, truth), base)
    return _report(cfg, info, source, base, results)


def _run_processes(jobs: list[_Job], base: str) -> list[_Result]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # never fork a process that may hold threads (the server, in tests)
    procs, pipes = [], []
    try:
        for job in jobs:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child_main, args=(child, job), name=f"edgeopt-bench-client-{job.index + 1}",
                            daemon=True)
            p.start()
            child.close()
            procs.append(p)
            pipes.append(parent)

        def receive(i: int, timeout: Optional[float]):
            pipe, p = pipes[i], procs[i]
            t_end = None if timeout is None else time.monotonic() + timeout
            while not pipe.poll(0.2):
                if not p.is_alive() and not pipe.poll(0):
                    raise StageError(f"load generator process {i + 1} exited with {p.exitcode} before reporting")
                if t_end is not None and time.monotonic() > t_end:
                    raise StageError(f"load generator process {i + 1} did not start in {timeout:.0f} s")
            try:
                msg = pipe.recv()
            except EOFError:
                raise StageError(f"load generator process {i + 1} exited with {p.exitcode} before reporting") from None
            if msg[0] == "error":
                if msg[1] in ("refused", "reset", "closed", "timeout", "OSError", "gaierror"):
                    raise InputError(f"{base}: load generator process {i + 1} cannot open its connections ({msg[2]})")
                raise StageError(f"load generator process {i + 1} failed: {msg[2]}")
            return msg

        for i in range(len(jobs)):
            receive(i, 120.0)
        start = time.time() + 0.05
        for pipe in pipes:
            pipe.send(start)
        return [receive(i, None)[1] for i in range(len(jobs))]
    finally:
        for pipe in pipes:  # a process still waiting for the start time sees EOF and exits
            pipe.close()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def _report(cfg: LoadConfig, info: dict, source: str, base: str, results: list[_Result]) -> LoadReport:
    import numpy as np

    lat = np.concatenate([np.frombuffer(r.lat_ms, dtype=np.float64) for r in results if len(r.lat_ms)] or [np.zeros(0)])
    if not len(lat):
        raise StageError("no requests were sent; give --requests or --duration")
    status: Counter = Counter()
    for r in results:
        status.update(r.status)
    correct, scored = sum(r.correct for r in results), sum(r.scored for r in results)
    wall = max(r.wall_s for r in results)
    ok = status.get(200, 0)
    cpu = [r.cpu_s / r.wall_s if r.wall_s > 0 else 0.0 for r in results]
    send_rate = end_lag = None
    if cfg.rate is not None:
        sent = sum(r.sent_on_schedule for r in results)
        # on schedule, the last send is due at (sent - 1) / rate; one more interval makes the rate exact
        span = max(r.last_send_s for r in results) + 1 / cfg.rate
        send_rate = sent / span if span > 0 else None
        end_lag = max(r.end_lag_s for r in results)
    warnings = client_limits(cpu, cfg.rate, send_rate, end_lag or 0.0)
    limited = bool(warnings)
    waited = sum(r.waited for r in results)
    if waited:
        warnings.append(f"{waited} of {len(lat)} requests found all {cfg.max_connections} connections busy and waited "
                        f"for one (their latency counts the wait): the server did not keep up with --rate {cfg.rate:g}; "
                        "raise --max-connections if it has capacity to spare")
    row = BenchRow(
        artifact=f"{info.get('name')} @ {base}", path=base, format="http", precision=str(info.get("precision")),
        batch_size=cfg.items_per_request, seq_len="auto", p50_ms=float(np.percentile(lat, 50)),
        p90_ms=float(np.percentile(lat, 90)), p99_ms=float(np.percentile(lat, 99)),
        throughput=ok * cfg.items_per_request / wall, accuracy=(correct / scored) if scored else None,
        concurrency=cfg.concurrency if cfg.rate is None else sum(r.peak_connections for r in results),
        requests=len(lat), errors=len(lat) - ok, status_counts={str(k): v for k, v in status.items()},
    )
    return LoadReport(config=BenchConfig(runs=len(lat), warmup=cfg.warmup, batch_sizes=[cfg.items_per_request]),
                      data=source, threads=None, machine=machine_info(), rows=[row],
                      mode="closed-loop" if cfg.rate is None else "open-loop", rate=cfg.rate,
                      send_rate=send_rate, processes=cfg.processes, connections=sum(r.opened for r in results),
                      client_cpu=[round(c, 4) for c in cpu], client_limited=limited, warnings=warnings)
