"""How far an int8 model is from this CPU's int8 peak.

Three figures, in one process, 2 intra-op threads (``--threads``):

1. the instruction peak: cores x clock x int8 multiply-accumulates per cycle per core that the CPU's
   widest int8 dot-product instruction can retire (read from /proc/cpuinfo's flags: AMX-INT8, AVX-512
   VNNI, AVX-VNNI, else AVX2 ``vpmaddubsw``); an upper bound, not a promise;
2. what ONNX Runtime's own int8 GEMM reaches on a large MatMulInteger (u8 x s8, 1024^3): the kernel's
   practical ceiling on this machine;
3. what each int8 artifact given reaches end to end: its multiply-accumulates per call (counted from
   the graph's MatMul/MatMulInteger/QAttention/Gemm shapes at the given batch and sequence length,
   attention's score and context products included) over its measured median time.

    python benchmarks/int8_peak.py ART [ART ...] [--seq 128] [--batch 1,8] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu() -> tuple[str, set, float]:
    model, flags, mhz = "?", set(), 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")) and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("cpu MHz") and not mhz:
            mhz = float(line.split(":", 1)[1])
    return model, flags, mhz


def macs_per_cycle(flags: set) -> tuple[int, str]:
    """int8 MACs per cycle per core of the widest int8 dot product (sustained throughput)."""
    if "amx_int8" in flags:
        return 1024, "AMX-INT8 TDPBUSD (16x64 by 64x16 tile per 16 cycles)"
    if "avx512_vnni" in flags:
        return 128, "AVX-512 VNNI vpdpbusd zmm (64 MACs, 2 per cycle on 2-FMA-port cores)"
    if "avx_vnni" in flags:
        return 64, "AVX-VNNI vpdpbusd ymm (32 MACs, 2 per cycle)"
    if "avx2" in flags:
        return 32, "AVX2 vpmaddubsw+vpmaddwd ymm (32 MACs over 2 micro-ops, ~1 per cycle)"
    return 8, "no int8 SIMD flag read"


def session(path, threads: int):
    from edgeopt.runtime.onnxruntime import open_session

    return open_session(Path(path), threads=threads)


def gemm_ceiling(threads: int, n: int = 1024, reps: int = 10) -> float:
    """GMAC/s of ONNX Runtime's MatMulInteger, u8 activations x s8 weights, n x n x n."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.INT8, [n, n], rng.integers(-127, 127, (n, n), dtype=np.int8).tobytes(), raw=True)
    node = helper.make_node("MatMulInteger", ["A", "W"], ["Y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "gemm.onnx"
        onnx.save(m, str(p))
        s = session(p, threads)
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    s.run(None, {"A": a})
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.run(None, {"A": a})
        ts.append(time.perf_counter() - t0)
    return n ** 3 / float(np.median(ts)) / 1e9


def model_macs(path: Path, batch: int, seq: int) -> int:
    """Multiply-accumulates per call of the matrix products of a (BERT-style) graph."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    tokens = batch * seq
    total = 0
    for n in g.node:
        if n.op_type in ("MatMul", "MatMulInteger", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            k, m = inits[n.input[1]].shape[-2:]
            rows = batch if n.op_type == "Gemm" else tokens  # Gemm: the pooler / classifier head on [CLS]
            total += rows * k * m
        elif n.op_type in ("Attention", "QAttention"):
            w = inits.get(n.input[1])
            if w is None:
                continue
            hidden, three_h = w.shape
            total += tokens * hidden * three_h  # Q, K, V projections
            total += 2 * batch * seq * seq * (three_h // 3)  # scores and context
    return total


def time_artifact(art_path: Path, batch: int, seq: int, threads: int, reps: int) -> float:
    from edgeopt.artifact import load_artifact
    from edgeopt.metrics import SAMPLE_TEXTS
    from edgeopt.models.preprocess import Preprocessor

    art = load_artifact(art_path)
    s = session(art.path / art.manifest.model.file, threads)
    texts = (SAMPLE_TEXTS * batch)[:batch]
    feeds = Preprocessor(art)(texts, seq_len=seq)
    names = [i.name for i in s.get_inputs()]
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(3):
        s.run(None, feeds)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def op_profile(art_path: Path, batch: int, seq: int, threads: int, reps: int = 10) -> list[tuple[str, float]]:
    """Share of ONNX Runtime's kernel time per op type (its profiler), largest first."""
    import json

    import onnxruntime as ort

    from edgeopt.artifact import load_artifact
    from edgeopt.metrics import SAMPLE_TEXTS
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.runtime.onnxruntime import session_options

    art = load_artifact(art_path)
    with tempfile.TemporaryDirectory() as td:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(td) / "prof")
        s = ort.InferenceSession(str(art.path / art.manifest.model.file), so, providers=["CPUExecutionProvider"])
        feeds = Preprocessor(art)((SAMPLE_TEXTS * batch)[:batch], seq_len=seq)
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in s.get_inputs()}}
        for _ in range(reps):
            s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e.get("dur", 0)
    total = sum(by_op.values()) or 1.0
    return sorted(((k, v / total) for k, v in by_op.items()), key=lambda kv: -kv[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    model, flags, mhz = cpu()
    per_cycle, instr = macs_per_cycle(flags)
    cores = min(args.threads, os.cpu_count() or 1)
    peak = cores * mhz / 1e3 * per_cycle  # GMAC/s
    int8_flags = ",".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)
    print(f"CPU: {model}, {os.cpu_count()} logical CPUs, {mhz:.0f} MHz; flags: {int8_flags}")
    print(f"instruction peak: {cores} cores x {mhz / 1e3:.2f} GHz x {per_cycle} MACs/cycle ({instr}) = {peak:,.0f} GMAC/s")
    ceiling = gemm_ceiling(args.threads)
    print(f"ONNX Runtime MatMulInteger 1024^3 (u8 x s8): {ceiling:,.0f} GMAC/s = {ceiling / peak:.1%} of the instruction peak")
    print()
    print("| artifact | batch x seq | GMAC per call | p50 ms | GMAC/s | of ORT's GEMM ceiling | of instruction peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for art in args.artifacts:
        from edgeopt.artifact import load_artifact

        a = load_artifact(art)
        for b in [int(x) for x in args.batch.split(",")]:
            macs = model_macs(a.path / a.manifest.model.file, b, args.seq)
            t = time_artifact(art, b, args.seq, args.threads, args.reps)
            rate = macs / t / 1e9
            print(f"| {art.name} ({a.manifest.model.precision}) | {b} x {args.seq} | {macs / 1e9:.2f} | {t * 1e3:.1f} | "
                  f"{rate:,.0f} | {rate / ceiling:.0%} | {rate / peak:.1%} |")
    print()
    for art in args.artifacts:
        for b in [int(x) for x in args.batch.split(",")]:
            shares = op_profile(art, b, args.seq, args.threads)
            print(f"{art.name}, batch {b} x {args.seq}, kernel time by op type: "
                  + ", ".join(f"{op} {share:.0%}" for op, share in shares[:8]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
