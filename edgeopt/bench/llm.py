"""Benchmarks of language models (task text-generation): time to first token, decode tokens/s,
end-to-end seconds, peak RSS and size, side by side, at each prompt length.

Every contender gets the same prompt ids (real text tokenized by the first artifact's tokenizer,
repeated or cut to the requested length; every artifact's tokenizer must agree) and generates exactly
``new_tokens`` tokens greedily, end-of-sequence never chosen. Each artifact runs in its own
subprocess (``python -m edgeopt.bench.llm``), so peak RSS is its own. Hugging Face checkpoints
(format hf) run PyTorch eager fp32 ``model.generate(do_sample=False, min_new_tokens=max_new_tokens=N)``
(the baseline the issue names; time to first token from a transformers streamer: its first ``put`` is
the prompt, the second the first new token); ONNX Runtime GenAI folders run edgeopt's generation loop.
With ``rounds`` > 1 every round runs each contender once more in a fresh process, the order rotated,
so a burst of other work on a shared machine hits all of them alike; the figures pool every round's runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, Field, field_validator

from ..artifact import Artifact, load_artifact
from ..errors import ConfigError, StageError
from ..outputs import REPORT_MARK

TASK = "text-generation"
BACKENDS = {"hf": "pytorch generate", "genai": "onnxruntime-genai"}


class LLMBenchConfig(BaseModel):
    data: Optional[str] = None  # .jsonl texts for the prompts; none: built-in product text
    prompt_lengths: list[int] = Field(default_factory=lambda: [128, 512])  # tokens
    new_tokens: int = Field(128, ge=2)  # generated per run (decode tokens/s needs two)
    threads: Optional[int] = Field(None, ge=1)
    runs: int = Field(5, ge=1)  # timed generations per prompt length (per round)
    warmup: int = Field(1, ge=0)  # untimed generations per prompt length first (per round)
    rounds: int = Field(1, ge=1)  # fresh processes per contender, interleaved

    @field_validator("prompt_lengths")
    @classmethod
    def _positive(cls, v):
        if not v or any(n < 1 for n in v):
            raise ValueError("prompt lengths must be positive integers (tokens), e.g. 128,512")
        return v


class LLMBenchRow(BaseModel):
    artifact: str
    path: str
    format: str
    precision: str
    backend: str  # "pytorch generate" | "onnxruntime-genai"
    prompt_tokens: int
    new_tokens: int
    runs: int  # timed generations pooled into the figures below
    ttft_p50_ms: float  # time to first token (prefill + the first pick)
    ttft_p90_ms: float
    decode_tokens_per_s: float  # median over runs: tokens after the first, per second of their decoding
    e2e_s: float  # median seconds of one whole generation
    size_mb: float  # the model files on disk
    peak_rss_mb: float  # the worker process's peak (the largest over rounds)
    load_s: float
    decode_speedup: Optional[float] = None  # this decode tokens/s / the first artifact's, same prompt length
    ttft_speedup: Optional[float] = None  # the first artifact's TTFT p50 / this one's
    size_ratio: Optional[float] = None  # the first artifact's size / this one's (times smaller)
    same_tokens: Optional[int] = None  # leading generated tokens identical to the first artifact's


class LLMBenchReport(BaseModel):
    kind: Literal["edgeopt bench report"] = REPORT_MARK  # first key: marks the file as ours
    task: Literal["text-generation"] = TASK
    config: LLMBenchConfig
    data: str
    threads: Optional[int]
    machine: dict
    rows: list[LLMBenchRow]


def all_language_models(artifacts: Sequence[Union[Artifact, str, Path]]) -> bool:
    """True when every artifact is a language model (task text-generation), False when none is;
    a mix is a ConfigError: bench measures the two kinds differently."""
    arts = [a if isinstance(a, Artifact) else load_artifact(a, verify=False) for a in artifacts]
    lms = [a for a in arts if a.manifest.task == TASK]
    others = [a for a in arts if a.manifest.task != TASK]
    if lms and others:
        raise ConfigError(f"{lms[0].path} is a language model and {others[0].path} a {others[0].manifest.task} model; "
                          "bench measures language models (time to first token, tokens/s) apart: benchmark them separately")
    return bool(lms)


def _context(art: Artifact) -> Optional[int]:
    ctx = getattr(art.manifest.model, "context", None)
    pre = art.manifest.io.preprocessing
    return int(ctx or getattr(pre, "max_length", 0) or 0) or None


def _tokenizer(art: Artifact):
    if art.manifest.format == "hf":
        from ..models.hf import load_tokenizer

        return load_tokenizer(art)
    from ..llm.tokenizer import LMTokenizer

    return LMTokenizer(art.path)


def prompt_ids(arts: list[Artifact], length: int, texts: Sequence[str]) -> list[int]:
    """``length`` ids of real text (``texts`` joined, repeated as needed, cut at ``length`` tokens),
    tokenized by the first artifact's tokenizer; every other tokenizer must give the same ids."""
    if any(a.manifest.format == "hf" for a in arts):
        import transformers

        transformers.logging.set_verbosity_error()  # "longer than the model's maximum length": we cut it ourselves
    toks = [_tokenizer(a) for a in arts]
    base = " ".join(t.strip() for t in texts if t and t.strip())
    if not base:
        raise ConfigError("the prompt texts are empty; give --data with some text")
    text, ids = base, toks[0](base)["input_ids"]
    while len(ids) < length:
        text = f"{text} {base}"
        ids = toks[0](text)["input_ids"]
    ids = [int(i) for i in ids[:length]]
    for art, tok in zip(arts[1:], toks[1:]):
        if [int(i) for i in tok(text)["input_ids"][:length]] != ids:
            raise ConfigError(f"{arts[0].path} and {art.path} tokenize the prompt differently; bench compares "
                              "variants of one model (the same tokenizer)")
    return ids


def bench_llm(artifacts: Sequence[Union[Artifact, str, Path]], config: Optional[LLMBenchConfig] = None) -> LLMBenchReport:
    """Time to first token, decode tokens/s, end-to-end seconds, peak RSS and size of language models,
    one row per artifact and prompt length; ratios are against the first artifact (the baseline)."""
    from ..progress import progress
    from .core import machine_info

    cfg = config or LLMBenchConfig()
    arts = [a if isinstance(a, Artifact) else load_artifact(a) for a in artifacts]
    if not arts:
        raise ConfigError("give at least one artifact to benchmark")
    if not all_language_models(arts):
        raise ConfigError(f"{arts[0].path} is a {arts[0].manifest.task} model, not a language model (text-generation); "
                          "edgeopt.bench.core.bench measures it")
    longest = max(cfg.prompt_lengths)
    for art in arts:  # before any work
        ctx = _context(art)
        if ctx and longest + cfg.new_tokens > ctx:
            raise ConfigError(f"prompt length {longest} + {cfg.new_tokens} new tokens = {longest + cfg.new_tokens} tokens: "
                              f"more than the context of {art.path} ({ctx} tokens); give shorter --prompt-lengths or "
                              "fewer --new-tokens")
    from ..llm.generate import check_generator

    for art in arts:
        check_generator(art)
    if cfg.data:
        from ..data import load_dataset

        ds = load_dataset(cfg.data, kind="text")
        texts, source = list(ds.samples), str(ds.source)
    else:
        from ..metrics import SAMPLE_TEXTS

        texts, source = SAMPLE_TEXTS, "built-in product text"
    ids = prompt_ids(arts, longest, texts)
    prompts = {n: ids[:n] for n in sorted(set(cfg.prompt_lengths), key=cfg.prompt_lengths.index)}

    results: list[list[dict]] = [[] for _ in arts]
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as td, \
            progress("benchmarking", len(arts) * cfg.rounds) as advance:
        for r in range(cfg.rounds):
            for k in range(len(arts)):
                i = (k + r) % len(arts)
                out = Path(td) / f"{r}-{i}.json"
                job = {"artifact": str(arts[i].path), "prompts": {str(n): p for n, p in prompts.items()},
                       "new_tokens": cfg.new_tokens, "runs": cfg.runs, "warmup": cfg.warmup, "threads": cfg.threads,
                       "out": str(out)}
                results[i].append(_spawn(arts[i], job, out, cfg.threads))
                advance(1)
    return LLMBenchReport(config=cfg, data=source, threads=cfg.threads, machine=machine_info(),
                          rows=_rows(arts, results, list(prompts), cfg))


def _spawn(art: Artifact, job: dict, out: Path, threads: Optional[int]) -> dict:
    env = {**os.environ, "EDGEOPT_QUIET": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "edgeopt.bench.llm", json.dumps(job)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise StageError(f"benchmarking {art.path} failed: {tail[-1] if tail else 'no output'}")
    return json.loads(out.read_text())


def _rows(arts: list[Artifact], results: list[list[dict]], lengths: list[int], cfg: LLMBenchConfig) -> list[LLMBenchRow]:
    rows = []
    for art, res in zip(arts, results):
        m = art.manifest
        for n in lengths:
            runs = [x for r in res for x in r["lengths"][str(n)]["runs"]]
            ttft = np.asarray([x["ttft_ms"] for x in runs])
            rows.append(LLMBenchRow(
                artifact=art.name, path=str(art.path), format=m.format, precision=m.model.precision,
                backend=res[0]["backend"], prompt_tokens=n, new_tokens=cfg.new_tokens, runs=len(runs),
                ttft_p50_ms=float(np.percentile(ttft, 50)), ttft_p90_ms=float(np.percentile(ttft, 90)),
                decode_tokens_per_s=float(np.median([x["decode_tps"] for x in runs])),
                e2e_s=float(np.median([x["seconds"] for x in runs])), size_mb=res[0]["size_bytes"] / 1e6,
                peak_rss_mb=max(r["peak_rss_mb"] for r in res), load_s=float(np.median([r["load_s"] for r in res])),
            ))
    base = {r.prompt_tokens: r for r in rows[: len(lengths)]}
    base_tokens = {n: results[0][0]["lengths"][str(n)]["tokens"] for n in lengths}
    for i, row in enumerate(rows):
        b = base[row.prompt_tokens]
        row.decode_speedup = row.decode_tokens_per_s / b.decode_tokens_per_s
        row.ttft_speedup = b.ttft_p50_ms / row.ttft_p50_ms
        row.size_ratio = b.size_mb / row.size_mb if row.size_mb else None
        mine = results[i // len(lengths)][0]["lengths"][str(row.prompt_tokens)]["tokens"]
        want = base_tokens[row.prompt_tokens]
        row.same_tokens = next((k for k, (a, c) in enumerate(zip(mine, want)) if a != c), min(len(mine), len(want)))
    return rows


# --- rendering ------------------------------------------------------------------------------------

COLUMNS = ["artifact", "format", "precision", "backend", "prompt", "new", "TTFT p50 ms", "decode tok/s", "e2e s",
           "decode speedup", "TTFT speedup", "size MB", "x smaller", "peak RSS MB", "same tokens"]


def rows_as_text(report: LLMBenchReport) -> list[list[str]]:
    def x(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f}x"

    return [[r.artifact, r.format, r.precision, r.backend, str(r.prompt_tokens), str(r.new_tokens), f"{r.ttft_p50_ms:.1f}",
             f"{r.decode_tokens_per_s:.1f}", f"{r.e2e_s:.3f}", x(r.decode_speedup), x(r.ttft_speedup), f"{r.size_mb:.1f}",
             x(r.size_ratio), f"{r.peak_rss_mb:.0f}", "-" if r.same_tokens is None else f"{r.same_tokens}/{r.new_tokens}"]
            for r in report.rows]


def _subtitle(report: LLMBenchReport) -> str:
    c = report.config
    return (f"prompts: {report.data}; threads: {report.threads or 'default'}; {c.runs} runs after {c.warmup} warm-up"
            + (f", {c.rounds} interleaved rounds" if c.rounds > 1 else ""))


def rich_table(report: LLMBenchReport, title: str = "edgeopt bench (language models)"):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(f"{title} — {_subtitle(report)}"))
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("artifact", "format", "precision", "backend") else "right")
    for row in rows_as_text(report):
        t.add_row(*(Text(cell) for cell in row))  # an artifact named 'm[bold]' is text, not markup
    return t


def markdown(report: LLMBenchReport, title: str = "edgeopt bench (language models)") -> str:
    m = report.machine
    lines = [f"# {title}", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), Python {m.get('python')}, "
             f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch', '-')}", f"{_subtitle(report)}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows_as_text(report)]
    lines += ["", "Greedy, end-of-sequence never chosen: every run generates exactly the new tokens. TTFT: time to the "
              "first new token (prefill included); decode tok/s: the tokens after the first per second of their "
              "decoding (median over runs). Speedups and 'x smaller' are against the first artifact at the same "
              "prompt length; 'same tokens': leading generated tokens identical to the first artifact's."]
    return "\n".join(lines) + "\n"


def plot(report: LLMBenchReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._version import __version__

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in dict.fromkeys(r.prompt_tokens for r in report.rows):
        rows = [r for r in report.rows if r.prompt_tokens == n]
        ax.scatter([r.size_mb for r in rows], [r.decode_tokens_per_s for r in rows], label=f"prompt {n}", s=60)
        for r in rows:
            ax.annotate(r.artifact, (r.size_mb, r.decode_tokens_per_s), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (MB, log scale)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"decode speed vs size — {report.threads or 'default'} threads")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png", metadata={"Software": f"edgeopt {__version__}"})  # marks it as edgeopt's
    plt.close(fig)
    return Path(path)


def write_outputs(report: LLMBenchReport, json_path: Optional[Path] = None, md_path: Optional[Path] = None,
                  title: str = "edgeopt bench (language models)", inputs: tuple = ()) -> dict[str, Path]:
    """The JSON and/or Markdown report (each atomically), the PNG plot beside the Markdown; as
    edgeopt.bench.report.write_outputs does for other models."""
    from .report import write_report_files

    return write_report_files(report, json_path, md_path, inputs, lambda: markdown(report, title), plot,
                              "decode speed vs size")


# --- the worker (one artifact, its own process) ---------------------------------------------------

def _hf_generate(gen, ids: list[int], n: int) -> dict:
    """Hugging Face ``generate``, greedy, exactly ``n`` new tokens; the first token's time from a streamer."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        calls, first = 0, None

        def put(self, value):  # first call: the prompt; second: the first new token
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    x = torch.tensor([ids])
    clock = Clock()
    pad = gen.tok.pad_token_id if gen.tok.pad_token_id is not None else min(gen.eos, default=0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = gen.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, streamer=clock, pad_token_id=pad)
    end = time.perf_counter()
    first = clock.first or end
    return {"ttft_ms": (first - t0) * 1000, "decode_tps": (n - 1) / (end - first) if end > first else 0.0,
            "seconds": end - t0, "tokens": out[0, len(ids):].tolist()}


def _loop(gen, ids: list[int], n: int) -> dict:
    from ..llm.generate import GenerateConfig

    run = gen.stream("", GenerateConfig(max_new_tokens=n, ignore_eos=True), ids=ids)
    for _ in run:
        pass
    r = run.result
    return {"ttft_ms": r.time_to_first_token_ms, "decode_tps": r.decode_tokens_per_s or 0.0, "seconds": r.seconds,
            "tokens": r.tokens}


def _worker(job: dict) -> None:
    from ..formats import handler_for
    from ..llm.generate import load_generator
    from .worker import peak_rss_mb

    art = load_artifact(job["artifact"], verify=False)
    t0 = time.perf_counter()
    gen = load_generator(art, job["threads"])
    load_s = time.perf_counter() - t0
    run = _hf_generate if art.manifest.format == "hf" else _loop
    n = int(job["new_tokens"])
    lengths = {}
    for key, ids in job["prompts"].items():
        for _ in range(job["warmup"]):
            run(gen, ids, n)
        runs = [run(gen, ids, n) for _ in range(job["runs"])]
        for r in runs:
            if len(r["tokens"]) != n:
                raise StageError(f"{art.path}: generated {len(r['tokens'])} tokens at prompt length {key}, not {n}")
        lengths[key] = {"runs": [{k: v for k, v in r.items() if k != "tokens"} for r in runs], "tokens": runs[-1]["tokens"]}
    result = {"backend": BACKENDS[art.manifest.format], "load_s": load_s, "size_bytes": handler_for(art).size_bytes(art),
              "peak_rss_mb": peak_rss_mb(), "lengths": lengths}
    Path(job["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    from ..errors import EdgeoptError

    try:
        _worker(json.loads(sys.argv[1]))
    except EdgeoptError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
