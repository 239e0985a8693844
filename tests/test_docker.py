"""Real Docker: package images for x86 (and rpi5 under qemu), run them, call them over HTTP,
ship them to a Docker engine over ssh:// and benchmark there.

Needs a Docker daemon and a local base image (CI's .ci/setup-docker starts dockerd, builds the
bases with docker/local-base.sh and runs sshd on 127.0.0.1); each test says why when it skips.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from test_cli import assert_clean_failure, cli

AMD64_BASES = ["local/debian:bookworm", "python:3.11-slim"]
ARM64_BASES = ["local/debian-arm64:bookworm"]
SSH_HOST = "ssh://root@127.0.0.1"


@pytest.fixture(scope="module")
def client():
    docker = pytest.importorskip("docker")
    try:
        c = docker.from_env(timeout=600)
        c.ping()
    except Exception as e:
        pytest.skip(f"no Docker daemon ({str(e).splitlines()[0][:80]}); start one: `sudo dockerd &` (CI: .ci/setup-docker)")
    return c


def _base(client, candidates, arch: str) -> str:
    for tag in candidates:
        try:
            img = client.images.get(tag)
        except Exception:
            continue
        if img.attrs.get("Architecture") == arch:
            return tag
    pytest.skip(f"no {arch} base image ({', '.join(candidates)}); build one with docker/local-base.sh {arch}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None, timeout: float = 30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def _wait_ready(url: str, container, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        container.reload()
        assert container.status != "exited", container.logs(tail=20).decode()
        try:
            if _get(url + "/readyz", timeout=3)[0] == 200:
                return time.monotonic() - t0
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready after {timeout} s: {container.logs(tail=20).decode()}")


def _in_process(artifact: Path, body: dict) -> dict:
    """The same request answered by the same server code, in this process."""
    from fastapi.testclient import TestClient

    from edgeopt.serve.app import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(artifact=str(artifact)))) as tc:
        for _ in range(200):
            if tc.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        r = tc.post("/v1/predict", json=body)
        assert r.status_code == 200, r.text
        return r.json()


def _same_predictions(got: dict, want: dict, atol: float) -> None:
    assert [[p["label"] for p in item["top"]] for item in got["predictions"]] == \
           [[p["label"] for p in item["top"]] for item in want["predictions"]]
    g = np.array([[p["score"] for p in item["top"]] for item in got["predictions"]])
    w = np.array([[p["score"] for p in item["top"]] for item in want["predictions"]])
    np.testing.assert_allclose(g, w, atol=atol, rtol=0)


def _package_built(art, target: str, out: Path, base: str, tag: str, timeout: float = 1200) -> dict:
    """`edgeopt package ART --target T --build` on the local engine; its bundle.json."""
    proc = cli("package", art, "--target", target, "-o", out, "--base-image", base, "--build", "--tag", tag, "--json",
               timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


BODY = {"inputs": ["red running shoes for trail", "stainless steel kitchen knife", "a cotton t-shirt"], "top_k": 3}


@pytest.fixture(scope="module")
def x86_bundle(client, cls_onnx, tmp_path_factory):
    base = _base(client, AMD64_BASES, "amd64")
    out = tmp_path_factory.mktemp("docker") / "bundle-x86"
    tag = f"edgeopt-test/cls:x86-{os.getpid()}"
    yield _package_built(cls_onnx.path, "x86", out, base, tag)
    try:
        client.images.remove(tag, force=True)
    except Exception:
        pass


def test_x86_image_serves_like_in_process(client, x86_bundle, cls_onnx):
    b = x86_bundle
    img = client.images.get(b["tag"])
    assert b["image"]["id"] == img.id and b["image"]["architecture"] == "amd64"
    labels = img.attrs["Config"]["Labels"]
    assert labels["io.edgeopt.target"] == "x86"
    assert labels["io.edgeopt.model.sha256"] == cls_onnx.manifest.files["model.onnx"]
    assert labels["org.opencontainers.image.version"] == labels["io.edgeopt.version"]
    assert img.attrs["Config"]["User"] == "10001:10001"  # never root
    assert "curl" not in json.dumps(img.attrs["Config"]["Healthcheck"])
    assert img.attrs["Size"] < 300e6, img.attrs["Size"]  # core + [serve] only, trimmed
    port = _free_port()
    c = client.containers.run(b["tag"], detach=True, ports={"8000/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, c, 120)
        status, raw = _get(url + "/v1/predict", BODY)
        assert status == 200
        got = json.loads(raw)
        _same_predictions(got, _in_process(cls_onnx.path, BODY), atol=1e-6)
        metrics = _get(url + "/metrics")[1].decode()
        assert "edgeopt_requests_total" in metrics or "edgeopt_" in metrics
        # the HEALTHCHECK (no curl in the image) turns healthy once /readyz answers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            c.reload()
            if c.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            time.sleep(1)
        assert c.attrs["State"]["Health"]["Status"] == "healthy"
        top = c.top(ps_args="-o pid,user:20,args")  # the server process is not root
        users = [row[1] for row in top["Processes"] if "edgeopt" in row[-1]]
        assert users and "root" not in users, top
    finally:
        c.remove(force=True)


def test_x86_image_of_an_openvino_artifact(client, emb_onnx, text_jsonl, tmp_path):
    """An artifact tune wrote for OpenVINO: the image gets OpenVINO and serves what the host computes."""
    pytest.importorskip("openvino")
    from _support import write_openvino_artifact

    art = tmp_path / "ov"
    write_openvino_artifact(emb_onnx, text_jsonl, art, tmp_path / "cache", rounds=1, batch_sizes=[1], static=False,
                            eval_samples=16)
    base = _base(client, AMD64_BASES, "amd64")
    tag = f"edgeopt-test/ov:x86-{os.getpid()}"
    b = _package_built(art, "x86", tmp_path / "b", base, tag)
    assert b["checks"]["runtime"] == "openvino" and any(p.lower().startswith("openvino") for p in b["packages"])
    port = _free_port()
    c = client.containers.run(tag, detach=True, ports={"8000/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, c, 180)
        body = {"inputs": BODY["inputs"]}
        status, raw = _get(url + "/v1/predict", body)
        assert status == 200, raw
        got = np.asarray(json.loads(raw)["embeddings"], dtype=np.float32)
        want = np.asarray(_in_process(art, body)["embeddings"], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-4)
    finally:
        _remove(client, c, tag)


def _remove(client, container, tag: str) -> None:
    """A test's container and image, gone whatever happened."""
    container.remove(force=True)
    try:
        client.images.remove(tag, force=True)
    except Exception:
        pass


def _ssh_ok() -> bool:
    try:
        return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "root@127.0.0.1", "docker", "version"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def ssh_host(client):
    if not _ssh_ok():
        pytest.skip("no ssh to root@127.0.0.1 with a Docker engine (CI: .ci/setup-docker runs sshd with a generated key)")
    return SSH_HOST


def test_deploy_over_ssh_then_replace_then_port_in_use(client, x86_bundle, ssh_host, tmp_path):
    port = _free_port()
    name = f"edgeopt-test-{os.getpid()}"
    try:
        proc = cli("deploy", x86_bundle["path"], "--docker-host", ssh_host, "--port", port, "--name", name, "--json", timeout=600)
        assert proc.returncode == 0, proc.stderr
        d = json.loads(proc.stdout)
        assert d["url"] == f"http://127.0.0.1:{port}" and d["name"] == name and d["routes"] == ["/v1/predict"]
        status, raw = _get(d["url"] + "/v1/predict", BODY)
        assert status == 200 and len(json.loads(raw)["predictions"]) == 3
        c = client.containers.get(name)
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        # deploying again replaces edgeopt's own container
        proc = cli("deploy", x86_bundle["tag"], "--docker-host", ssh_host, "--port", port, "--name", name, "--json", timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert client.containers.get(name).id != c.id
        # another container on the same port: one line naming the port
        proc = cli("deploy", x86_bundle["tag"], "--docker-host", ssh_host, "--port", port, "--name", name + "-2", timeout=600)
        msg = assert_clean_failure(proc, codes=(2,))
        assert f"port {port}" in msg and "--port" in msg
        with pytest.raises(Exception):
            client.containers.get(name + "-2")  # nothing left behind
    finally:
        for n in (name, name + "-2"):
            try:
                client.containers.get(n).remove(force=True)
            except Exception:
                pass


def test_deploy_refuses_a_port_a_process_holds(client, x86_bundle, ssh_host):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        name = f"edgeopt-test-busy-{os.getpid()}"
        proc = cli("deploy", x86_bundle["tag"], "--docker-host", ssh_host, "--port", port, "--name", name, timeout=600)
        msg = assert_clean_failure(proc, codes=(2,))
        assert f"port {port}" in msg
        with pytest.raises(Exception):
            client.containers.get(name)


def test_remote_bench_over_ssh(x86_bundle, ssh_host, tmp_path, text_jsonl):
    out = tmp_path / "remote.json"
    proc = cli("bench", x86_bundle["path"], "--docker-host", ssh_host, "--data", text_jsonl, "--batch-sizes", "1,4",
               "--runs", "5", "--warmup", "1", "--json-out", out, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert [r["batch_size"] for r in rep["rows"]] == [1, 4]
    assert all(r["p50_ms"] > 0 and r["format"] == "onnx" for r in rep["rows"])
    assert rep["rows"][0]["accuracy"] is not None  # labelled data went into the container
    m = rep["machine"]
    assert m["docker_host"] == ssh_host and m["target"] == "x86" and m["cores"] >= 1 and m["cpu"]
    assert m["arch"] == "x86_64"
    assert json.loads(out.read_text())["rows"] == rep["rows"]
    # the table (no --json) names the device
    proc = cli("bench", x86_bundle["tag"], "--docker-host", ssh_host, "--batch-sizes", "1", "--runs", "3", timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert f"edgeopt bench on {ssh_host}" in proc.stdout and "cores" in proc.stdout
    # language-model options on a classifier's image: one line, nothing shipped
    msg = assert_clean_failure(cli("bench", x86_bundle["path"], "--docker-host", ssh_host, "--new-tokens", "8"), codes=(2,))
    assert "language models" in msg and "text-classification" in msg



def test_tune_times_variants_on_the_device(x86_bundle, ssh_host, cls_onnx, text_jsonl, tmp_path):
    """edgeopt tune --docker-host: each variant's latency comes from bench in the target's image on the
    device (here the engine behind ssh://root@127.0.0.1); quality is measured here."""
    out = tmp_path / "tuned"
    proc = cli("tune", cls_onnx.path, "-o", out, "--data", text_jsonl, "--min-agreement", "0.5", "--budget-minutes", "0.01",
               "--batch-sizes", "1,2", "--eval-samples", "16", "--no-cache", "--docker-host", ssh_host,
               "--image", x86_bundle["path"], "--target", "x86", "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    m = res["machine"]
    assert m["docker_host"] == ssh_host and m["device"]["arch"] == "x86_64" and m["device"]["cpu"]
    timed = [t for t in res["trials"] if t["variant"]["ptq"] != "fp32"]
    assert len(timed) == 1 and res["stopped"]  # the budget allows the one int8 variant tune always measures
    lat = timed[0]["latency"]
    assert sorted(int(b) for b in lat) == [1, 2]
    assert all(x["ms"] > 0 and x["ref_ms"] > 0 and abs(x["speedup"] - x["ref_ms"] / x["ms"]) < 1e-9 for x in lat.values())
    assert (out / "manifest.json").is_file() and ssh_host in (out / "report" / "tune.md").read_text()
    # an image built for another target is refused before any variant is timed
    proc = cli("tune", cls_onnx.path, "-o", tmp_path / "t2", "--data", text_jsonl, "--no-cache", "--docker-host", ssh_host,
               "--image", x86_bundle["path"], "--target", "rpi5", timeout=600)
    msg = assert_clean_failure(proc, codes=(2,))
    assert "x86" in msg and "rpi5" in msg and not (tmp_path / "t2").exists()

def test_unreachable_docker_host_is_one_line(x86_bundle):
    proc = cli("deploy", x86_bundle["tag"], "--docker-host", "ssh://root@127.0.0.1:1", timeout=120)
    msg = assert_clean_failure(proc, codes=(1,))
    assert "ssh://root@127.0.0.1:1" in msg


def test_push_without_a_reachable_registry_is_one_line(client, cls_onnx, tmp_path):
    base = _base(client, AMD64_BASES, "amd64")
    tag = f"127.0.0.1:{_free_port()}/edgeopt-test/cls:push"
    proc = cli("package", cls_onnx.path, "--target", "x86", "-o", tmp_path / "b", "--base-image", base, "--build",
               "--push", "--tag", tag, timeout=1200)
    try:
        msg = assert_clean_failure(proc, codes=(1,))
        assert f"push of {tag}" in msg and "127.0.0.1" in msg
        assert (tmp_path / "b" / "bundle.json").is_file()  # the bundle and the image stay
    finally:
        try:
            client.images.remove(tag, force=True)
        except Exception:
            pass


def _binfmt_aarch64() -> bool:
    p = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    return p.is_file() and "enabled" in p.read_text()


def test_rpi5_image_builds_and_runs_under_qemu(client, cls_onnx, tmp_path, ssh_host):
    if not _binfmt_aarch64():
        pytest.skip("no qemu-aarch64 binfmt handler (install qemu-user-static >= 8 from bookworm-backports; CI: .ci/setup-docker)")
    base = _base(client, ARM64_BASES, "arm64")
    tag = f"edgeopt-test/cls:rpi5-{os.getpid()}"
    b = _package_built(cls_onnx.path, "rpi5", tmp_path / "b", base, tag, timeout=1800)
    assert b["platform"] == "linux/arm64" and b["image"]["architecture"] == "arm64"
    assert any(w.endswith("aarch64.whl") for w in b["files"] if w.startswith("wheels/onnxruntime-"))
    port = _free_port()
    c = client.containers.run(tag, detach=True, platform="linux/arm64", environment={"QEMU_CPU": "cortex-a76"},
                              ports={"8000/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, c, 600)
        assert c.exec_run(["uname", "-m"]).output.decode().strip() == "aarch64"
        status, raw = _get(url + "/v1/predict", BODY, timeout=120)
        assert status == 200
        # ARM's kernels round differently from x86's: same labels, scores within 1e-4
        _same_predictions(json.loads(raw), _in_process(cls_onnx.path, BODY), atol=1e-4)
        # an arm64 image is refused by an amd64 device, before anything is shipped or started
        proc = cli("deploy", tag, "--docker-host", ssh_host, "--port", _free_port(), timeout=600)
        msg = assert_clean_failure(proc, codes=(2,))
        assert "arm64" in msg and "amd64" in msg
    finally:
        _remove(client, c, tag)


# --- language models: an int4 ONNX Runtime GenAI folder in a CPU image (no torch, no transformers) ---------------

LM_PROMPT = "Wireless noise-cancelling headphones with"


@pytest.fixture(scope="module")
def lm_int4(tiny_lms, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime_genai")
    root = tmp_path_factory.mktemp("lm-image")
    p = cli("export", tiny_lms["llama"], "-o", root / "onnx", timeout=900)
    assert p.returncode == 0, p.stderr
    p = cli("quantize", root / "onnx", "-o", root / "int4", "--weights", "int4", timeout=900)
    assert p.returncode == 0, p.stderr
    return root / "int4"


def _sse(url: str, body: dict, timeout: float = 120) -> list[dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def _check_lm_image(client, tag: str, lm: Path, platform: str, env: dict, ready_s: float) -> None:
    """The image answers /v1/completions greedily with the host's tokens and text, streams a chat completion,
    and holds neither torch nor transformers."""
    import edgeopt
    from edgeopt.llm.generate import GenerateConfig

    want = edgeopt.generate(lm, LM_PROMPT, GenerateConfig(max_new_tokens=12))
    want_chat = edgeopt.generate(lm, "a red kettle", GenerateConfig(max_new_tokens=8, chat=True))
    port = _free_port()
    c = client.containers.run(tag, detach=True, platform=platform, environment=env, ports={"8000/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, c, ready_s)
        status, raw = _get(url + "/v1/completions", {"prompt": LM_PROMPT, "max_tokens": 12, "temperature": 0}, timeout=300)
        assert status == 200, raw
        got = json.loads(raw)
        assert got["choices"][0]["text"] == want.text
        assert got["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": len(want.tokens),
                                "total_tokens": want.prompt_tokens + len(want.tokens)}
        events = _sse(url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "a red kettle"}],
                                                      "max_tokens": 8, "temperature": 0, "stream": True}, timeout=300)
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        assert text == want_chat.text
        assert events[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        # a prompt longer than the context: 422, one line
        try:
            _get(url + "/v1/completions", {"prompt": LM_PROMPT * 200, "max_tokens": 4})
            raise AssertionError("an over-long prompt was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 422
            assert "context" in json.loads(e.read())["error"]["message"]
        for module in ("torch", "transformers"):
            r = c.exec_run(["/opt/edgeopt/bin/python", "-c", f"import {module}"])
            assert r.exit_code != 0, f"{module} is in the image"
    finally:
        _remove(client, c, tag)


def test_x86_image_of_an_int4_language_model(client, lm_int4, tmp_path, ssh_host):
    base = _base(client, AMD64_BASES, "amd64")
    tag = f"edgeopt-test/lm:x86-{os.getpid()}"
    b = _package_built(lm_int4, "x86", tmp_path / "b", base, tag)
    assert b["model"]["task"] == "text-generation" and b["model"]["format"] == "genai"
    assert {"onnxruntime-genai", "jinja2", "onnxruntime", "tokenizers"} <= set(b["packages"])
    assert not {"torch", "transformers", "pillow", "onnx-ir"} & set(b["packages"])
    img = client.images.get(tag)
    assert img.attrs["Size"] < 350e6, img.attrs["Size"]
    assert img.attrs["Config"]["Labels"]["io.edgeopt.task"] == "text-generation"
    # shipped like any other image: deploy over ssh names the completion routes, which answer
    name = f"edgeopt-test-lm-{os.getpid()}"
    proc = cli("deploy", tag, "--docker-host", ssh_host, "--port", _free_port(), "--name", name, "--json", timeout=600)
    try:
        assert proc.returncode == 0, proc.stderr
        d = json.loads(proc.stdout)
        assert d["task"] == "text-generation" and d["routes"] == ["/v1/completions", "/v1/chat/completions"]
        status, raw = _get(d["url"] + "/v1/completions", {"prompt": LM_PROMPT, "max_tokens": 4, "temperature": 0}, timeout=120)
        assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] in ("length", "stop")
        # benchmarked on the device, in the image: time to first token and decode tokens/s
        out = tmp_path / "lm-remote.json"
        proc = cli("bench", tag, "--docker-host", ssh_host, "--prompt-lengths", "16,32", "--new-tokens", "8", "--runs", "2",
                   "--threads", "1", "--json-out", out, "--json", timeout=900)
        assert proc.returncode == 0, proc.stderr
        rep = json.loads(proc.stdout)
        assert [(r["prompt_tokens"], r["new_tokens"]) for r in rep["rows"]] == [(16, 8), (32, 8)]
        assert all(r["backend"] == "onnxruntime-genai" and r["decode_tokens_per_s"] > 0 for r in rep["rows"])
        assert rep["machine"]["docker_host"] == ssh_host and rep["machine"]["target"] == "x86"
        assert json.loads(out.read_text())["rows"] == rep["rows"]
    finally:
        try:
            client.containers.get(name).remove(force=True)
        except Exception:
            pass
    _check_lm_image(client, tag, lm_int4, "linux/amd64", {}, 180)


def test_rpi5_image_of_an_int4_language_model_under_qemu(client, lm_int4, tmp_path):
    if not _binfmt_aarch64():
        pytest.skip("no qemu-aarch64 binfmt handler (install qemu-user-static >= 8 from bookworm-backports; CI: .ci/setup-docker)")
    base = _base(client, ARM64_BASES, "arm64")
    tag = f"edgeopt-test/lm:rpi5-{os.getpid()}"
    b = _package_built(lm_int4, "rpi5", tmp_path / "b", base, tag, timeout=1800)
    assert b["image"]["architecture"] == "arm64"
    assert any(w.startswith("wheels/onnxruntime_genai-") and w.endswith("aarch64.whl") for w in b["files"])
    _check_lm_image(client, tag, lm_int4, "linux/arm64", {"QEMU_CPU": "cortex-a76"}, 600)
