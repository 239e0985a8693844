"""Serving image size and start time per target: package an artifact with --build, then break the
image down (base, venv by package, model) and time `docker run` -> /readyz 200 over several rounds.

  .venv/bin/python benchmarks/image_size.py ARTIFACT --target x86=local/debian:bookworm \
      --target rpi5=local/debian-arm64:bookworm --rounds 5

Needs a Docker engine (and qemu-user-static >= 8 for arm64 targets on an x86 host: the arm64
start times are then emulated and mean nothing about a Pi). Prints one table; --json-out saves it.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def breakdown(tag: str, platform: str) -> dict:
    script = ("cd /opt/edgeopt/lib/python3*/site-packages && du -sk * | sort -n | tail -8; echo; du -sk /opt/edgeopt /opt/model")
    out = sh("docker", "run", "--rm", "--platform", platform, "--entrypoint", "sh", tag, "-c", script)
    top, tail = out.strip().split("\n\n")
    pkgs = {line.split()[1]: int(line.split()[0]) / 1024 for line in top.splitlines()}
    venv, model = (int(line.split()[0]) / 1024 for line in tail.splitlines())
    return {"venv_mb": venv, "model_mb": model, "largest_mb": dict(sorted(pkgs.items(), key=lambda kv: -kv[1]))}


def start_to_ready(tag: str, platform: str, timeout: float) -> float:
    port = free_port()
    t0 = time.monotonic()
    cid = sh("docker", "run", "-d", "--platform", platform, "-p", f"127.0.0.1:{port}:8000", tag).strip()
    try:
        while time.monotonic() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"{tag} not ready within {timeout} s")
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--target", action="append", required=True, help="TARGET=BASE_IMAGE")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    edgeopt = str(Path(sys.executable).with_name("edgeopt"))
    rows = []
    with tempfile.TemporaryDirectory() as td:
        images = []
        for spec in a.target:
            target, base = spec.split("=", 1)
            b = json.loads(sh(edgeopt, "package", a.artifact, "--target", target, "-o", f"{td}/{target}", "--base-image", base,
                              "--build", "--json"))
            base_mb = int(json.loads(sh("docker", "image", "inspect", base))[0]["Size"]) / 1e6
            images.append((target, b, base_mb))
        starts = {t: [] for t, _, _ in images}
        for _ in range(a.rounds):  # interleaved rounds
            for target, b, _ in images:
                starts[target].append(start_to_ready(b["tag"], b["platform"], 600))
        for target, b, base_mb in images:
            rows.append({"target": target, "platform": b["platform"], "base_image": b["base_image"],
                         "image_mb": b["image"]["size_bytes"] / 1e6, "base_mb": base_mb,
                         **breakdown(b["tag"], b["platform"]), "left_out": sorted(b["left_out"]),
                         "start_to_ready_s": statistics.median(starts[target]), "rounds": a.rounds})
    print(f"{'target':<8} {'image MB':>9} {'base MB':>8} {'venv MiB':>9} {'model MiB':>10} {'start->ready s':>15}  largest packages (MiB)")
    for r in rows:
        big = ", ".join(f"{k} {v:.0f}" for k, v in list(r["largest_mb"].items())[:6])
        print(f"{r['target']:<8} {r['image_mb']:>9.0f} {r['base_mb']:>8.0f} {r['venv_mb']:>9.0f} {r['model_mb']:>10.0f} "
              f"{r['start_to_ready_s']:>15.2f}  {big}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
