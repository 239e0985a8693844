"""Helpers shared by the `edgeopt serve` tests (imported by tests/serve/conftest.py and the test modules)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[2]
EDGEOPT_BIN = str(Path(sys.executable).parent / "edgeopt")

TEXTS = [
    "Wireless noise-cancelling headphones with 30 hours of battery life.",
    "Kids' waterproof hiking boots with a grippy rubber sole.",
    "Organic green tea, 100 bags.",
    "Slim-fit denim jeans, dark wash.",
    "USB-C charging cable, braided, two metres long.",
    "Grain-free salmon dry dog food for adult dogs, 12 lb bag.",
    "ok",
    "How do I reset my password?",
]
LABELLED = list(zip(TEXTS, ["a", "b", "c", "b", "a", "c", "c", "a"]))
LONG_TEXT = ("A very long description of a very ordinary kitchen sponge that goes on and on about how it cleans "
             "pots and pans and plates and cups without scratching any of them, even the non-stick ones. ") * 6


def distinct_texts(n: int, offset: int = 0) -> list[str]:
    """n different sentences of varying length (so padding differs within a batch)."""
    words = ["red", "blue", "cotton", "steel", "coffee", "tea", "boots", "cable", "phone", "dress", "rice", "honey"]
    return [f"item {i}: " + " ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 9))
            for i in range(offset, offset + n)]


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``pixels`` (H, W) in 0..255."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def digit_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n 8x8 images with pixel values 0..16 as the digits model expects (sklearn digits range), as float32."""
    from sklearn.datasets import load_digits

    imgs = load_digits().images.astype(np.float32)
    return [imgs[(seed + i * 37) % len(imgs)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# in-process reference
# ---------------------------------------------------------------------------------------------

class Reference:
    """The artifact run in-process (edgeopt runtime + preprocessor)."""

    def __init__(self, artifact):
        from edgeopt.models.preprocess import Preprocessor
        from edgeopt.runtime import load_runtime

        self.art = artifact
        self.labels = artifact.manifest.labels
        self.rt = load_runtime(artifact, threads=1)
        self.pre = Preprocessor(artifact)

    def outputs(self, samples) -> list[np.ndarray]:
        if self.pre.kind == "text":
            return self.rt.run(self.pre(list(samples)))
        return self.rt.run({self.rt.input_names[0]: self.pre.image(np.stack(samples))})

    def probs(self, samples) -> np.ndarray:
        z = self.outputs(samples)[0]
        z = z - z.max(axis=-1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)

    def one(self, sample) -> np.ndarray:
        """Probabilities (classifier) or embedding for a single input, run alone."""
        if self.labels:
            return self.probs([sample])[0]
        return self.outputs([sample])[0][0]


def check_prediction(pred: dict, probs: np.ndarray, labels: list[str], atol: float = 1e-5) -> None:
    best = int(np.argmax(probs))
    assert pred["label"] == labels[best], (pred, probs)
    assert abs(pred["score"] - float(probs[best])) <= atol, (pred, probs)


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server for an app, in a background thread."""

    def __init__(self, app, port: int):
        import uvicorn

        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    def start(self, timeout: float = 60.0) -> "LiveServer":
        import httpx

        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} exited during startup")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server on port {self.port} not ready after {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def metrics(self, headers: Optional[dict] = None) -> str:
        import httpx

        return httpx.get(self.url + "/metrics", timeout=10, headers=headers).text


@contextlib.contextmanager
def live_server(artifact, **settings) -> Iterator[LiveServer]:
    """``create_app(ServeSettings(artifact=..., **settings))`` served by uvicorn in a thread."""
    from edgeopt.serve.app import ServeSettings, create_app

    settings.setdefault("threads", 1)
    path = artifact.path if hasattr(artifact, "path") else artifact
    app = create_app(ServeSettings(artifact=str(path), **settings))
    srv = LiveServer(app, free_port()).start()
    try:
        yield srv
    finally:
        srv.stop()


class CliServer:
    """``edgeopt serve ARTIFACT --port P ...`` as a subprocess; stdout/stderr go to a log file (never a pipe
    nobody reads: uvicorn logs every request)."""

    def __init__(self, artifact, *args: str, env: Optional[dict] = None, log_dir: Optional[Path] = None):
        import tempfile

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = artifact.path if hasattr(artifact, "path") else artifact
        self.cmd = [EDGEOPT_BIN, "serve", str(path), "--port", str(self.port), *args]
        fd, name = tempfile.mkstemp(prefix="edgeopt-serve-", suffix=".log", dir=log_dir)
        self.log_path = Path(name)
        self._log = os.fdopen(fd, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 90.0) -> "CliServer":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgeopt serve exited with {self.proc.returncode} during startup:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"edgeopt serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, wait; SIGKILL if it does not go. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode


def start_cli_server(artifact, *args: str, env: Optional[dict] = None, timeout: float = 90.0) -> CliServer:
    """Start ``edgeopt serve`` and wait until /readyz answers 200."""
    srv = CliServer(artifact, *args, env=env)
    try:
        return srv.wait_ready(timeout)
    except BaseException:
        srv.stop()
        raise


# ---------------------------------------------------------------------------------------------
# assertions
# ---------------------------------------------------------------------------------------------

def metric_value(text: str, name: str, labels: Optional[dict] = None) -> float:
    """The value of one sample in a Prometheus text exposition (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    return 0.0


def assert_error_body(r, status: Optional[int] = None) -> str:
    """Every error answers JSON {"error": "..."} and never a traceback; returns the message."""
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers.get("content-type")
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text
    return body["error"]
