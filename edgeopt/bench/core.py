"""One harness for torch and ONNX artifacts.

Each artifact is measured in its own subprocess (``edgeopt.bench.worker``) so that
peak RSS is its own and thread settings of one runtime never leak into another.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, Field, field_validator

from ..artifact import Artifact, load_artifact
from ..errors import ConfigError, InputError, StageError
from ..stages.registry import StageConfig, stage


class BenchConfig(StageConfig):
    kind: Literal["bench"] = "bench"
    data: Optional[str] = None  # labelled data: accuracy; any data: real inputs; none: built-in samples
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    seq_len: Union[int, Literal["auto"]] = "auto"  # auto: pad each batch to its longest real input
    threads: Optional[int] = Field(None, ge=1)
    runs: int = Field(30, ge=1)
    warmup: int = Field(3, ge=0)
    eval_samples: Optional[int] = Field(None, ge=1)  # cap on samples for accuracy / fidelity
    # language models only (edgeopt.bench.llm): prompt lengths in tokens, tokens generated per run
    prompt_lengths: Optional[list[int]] = None
    new_tokens: Optional[int] = Field(None, ge=2)
    rounds: int = Field(1, ge=1)

    def llm_config(self):
        """The language-model benchmark's config from this one (runs and warmup only where given)."""
        from .llm import LLMBenchConfig

        given = self.model_fields_set
        kw = {k: getattr(self, k) for k in ("runs", "warmup") if k in given}
        if self.prompt_lengths is not None:
            kw["prompt_lengths"] = self.prompt_lengths
        if self.new_tokens is not None:
            kw["new_tokens"] = self.new_tokens
        return LLMBenchConfig(data=self.data, threads=self.threads, rounds=self.rounds, **kw)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v):
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be positive integers, e.g. 1,8")
        return v

    @field_validator("seq_len")
    @classmethod
    def _seq(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("seq_len must be a positive integer or 'auto'")
        return v


class BenchRow(BaseModel):
    artifact: str
    path: str
    format: str
    precision: str
    batch_size: int
    seq_len: Union[int, str, None]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # samples/s
    size_mb: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    load_s: Optional[float] = None
    accuracy: Optional[float] = None
    top1_agreement: Optional[float] = None
    cosine_mean: Optional[float] = None
    speedup: Optional[float] = None  # p50 of the first artifact / this p50 at the same batch size
    # HTTP load runs (edgeopt bench --url)
    concurrency: Optional[int] = None
    requests: Optional[int] = None
    errors: Optional[int] = None
    status_counts: Optional[dict[str, int]] = None


class BenchReport(BaseModel):
    kind: Literal["edgeopt bench report"] = "edgeopt bench report"  # first key: marks the file as ours
    config: BenchConfig
    data: str
    threads: Optional[int]
    machine: dict
    rows: list[BenchRow]


def machine_info() -> dict:
    import platform

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, **device_info()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def device_info() -> dict:
    """The board (device tree model: 'Raspberry Pi 5 Model B Rev 1.0', 'NVIDIA Jetson AGX Orin ...') and
    the Jetson L4T release, where the machine has them. In a container, EDGEOPT_HOST_ROOT names where
    the host's /etc and /sys/firmware are mounted (edgeopt bench --docker-host does that)."""
    root = Path(os.environ.get("EDGEOPT_HOST_ROOT", "/"))
    out = {}
    for p in (root / "sys/firmware/devicetree/base/model", root / "proc/device-tree/model"):
        try:
            out["board"] = p.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
            break
        except OSError:
            continue
    try:
        line = (root / "etc/nv_tegra_release").read_text().splitlines()[0]  # "# R36 (release), REVISION: 4.0, ..."
        import re

        if m := re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", line):
            out["l4t"] = f"r{m[1]}.{m[2]}"
    except (OSError, IndexError):
        pass
    return out


@stage("bench")
def bench(artifacts: list[Union[Artifact, str, Path]], config: Optional[BenchConfig] = None) -> BenchReport:
    from ..progress import progress

    cfg = config or BenchConfig()
    arts = [a if isinstance(a, Artifact) else load_artifact(a) for a in artifacts]
    if not arts:
        raise ConfigError("give at least one artifact to benchmark")
    from ..formats import handler_for
    from .llm import all_language_models

    if all_language_models(arts):  # a mix of language models and others: one ConfigError
        if {"batch_sizes", "seq_len", "eval_samples"} & cfg.model_fields_set:
            raise ConfigError("batch_sizes, seq_len and eval_samples are not for language models; give prompt_lengths "
                              "and new_tokens")
        from .llm import bench_llm

        return bench_llm(arts, cfg.llm_config())  # time to first token, decode tokens/s per prompt length
    if cfg.prompt_lengths is not None or cfg.new_tokens is not None:
        raise ConfigError("prompt_lengths and new_tokens are for language models (text-generation artifacts); use "
                          "batch_sizes and seq_len for these")
    for art in arts:  # hf/torch artifacts need PyTorch: say so before any subprocess
        handler_for(art).check_runtime_installed(art)
    kinds = {a.manifest.io.preprocessing.kind if a.manifest.io.preprocessing else None for a in arts}
    if len(kinds) > 1:
        raise ConfigError("these artifacts take different inputs (text and image); benchmark them separately")
    if cfg.data:
        from ..data import load_dataset

        load_dataset(cfg.data, kind=kinds.pop())  # fail fast, before any subprocess
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as td, progress("benchmarking", len(arts)) as advance:
        for i, art in enumerate(arts):
            out = Path(td) / f"{i}"
            job = {"artifact": str(art.path), "config": cfg.model_dump(), "out": str(out)}
            env = {**os.environ, "EDGEOPT_QUIET": "1"}
            if cfg.threads:
                env.update(OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads))
            proc = subprocess.run([sys.executable, "-m", "edgeopt.bench.worker", json.dumps(job)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                raise StageError(f"benchmarking {art.path} failed: {tail[-1] if tail else 'no output'}")
            res = json.loads((out / "result.json").read_text())
            res["outputs"] = np.load(out / "outputs.npy")
            results.append((art, res))
            advance(1)
    return _report(results, cfg)


def _report(results, cfg: BenchConfig) -> BenchReport:
    from ..metrics import quality

    ref_art, ref = results[0]
    base_p50 = {lat["batch_size"]: lat["p50_ms"] for lat in ref["latency"]}
    rows = []
    for art, res in results:
        m = art.manifest
        q = res.get("quality", {})
        fid = {}
        if res["outputs"].shape == ref["outputs"].shape and art is not ref_art:
            fid = quality(m.task, res["outputs"], None, ref["outputs"])
        for lat in res["latency"]:
            rows.append(BenchRow(
                artifact=art.name, path=str(art.path), format=m.format,
                precision=m.model.precision, batch_size=lat["batch_size"], seq_len=lat["seq_len"],
                p50_ms=lat["p50_ms"], p90_ms=lat["p90_ms"], p99_ms=lat["p99_ms"], throughput=lat["throughput"],
                size_mb=res["size_bytes"] / 1e6, peak_rss_mb=res["peak_rss_mb"], load_s=res["load_s"],
                accuracy=q.get("accuracy"), top1_agreement=fid.get("top1_agreement"), cosine_mean=fid.get("cosine_mean"),
                speedup=base_p50.get(lat["batch_size"], 0) / lat["p50_ms"] if lat["p50_ms"] else None,
            ))
    return BenchReport(config=cfg, data=ref["data"], threads=cfg.threads, machine=machine_info(), rows=rows)


def check_data_kind(art: Artifact, data) -> None:
    pre = art.manifest.io.preprocessing
    if pre is not None and data.kind != pre.kind:
        raise InputError(f"{data.source}: {data.kind} data for a model that takes {pre.kind} input")
