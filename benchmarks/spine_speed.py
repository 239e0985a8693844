"""Issue #2 speed check: product classifier (all-MiniLM-L6-v2 fine-tuned), 2 threads, batch 1 and 8.

Compares PyTorch eager fp32, a plain (unoptimized) fp32 ONNX export, the optimized fp32
export and several int8 variants, at a fixed sequence length of 128 and at the
dataset's real lengths, and prints the ratios the issue asks for.

    python benchmarks/spine_speed.py [--workdir runs/bench-spine] [--runs 50]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from edgeopt.bench.core import BenchConfig, bench
from edgeopt.bench.report import markdown, rich_table
from edgeopt.demo import run_demo
from edgeopt.stages.export import ExportConfig, export
from edgeopt.stages.quantize import QuantizeConfig, quantize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "product-classifier" / "data"


def build(workdir: Path):
    res = run_demo(workdir)  # trained (LoRA merged) -> onnx (fused) -> int8 (dynamic, per-channel); cached
    arts = {s.name: s.path for s in res.stages if s.kind != "bench"}
    variants = {
        "onnx-plain": lambda out: export(arts["trained"], out, ExportConfig(optimize=False)),
        "int8-dyn-tensor": lambda out: quantize(arts["onnx"], out, QuantizeConfig(ptq="dynamic", per_channel=False, eval_data=str(DATA / "test.jsonl"))),
        "int8-static-qdq": lambda out: quantize(arts["onnx"], out, QuantizeConfig(ptq="static", calib=str(DATA / "train.jsonl"), calib_samples=256, method="minmax", eval_data=str(DATA / "test.jsonl"))),
    }
    for name, make in variants.items():
        out = workdir / name
        if not (out / "manifest.json").exists():
            make(out)
        arts[name] = out
    return arts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-spine")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--md", type=Path, default=None, help="append the Markdown tables here")
    args = ap.parse_args()
    console = Console(width=200)
    arts = build(args.workdir)
    order = ["trained", "onnx-plain", "onnx", "int8", "int8-dyn-tensor", "int8-static-qdq"]
    summary = {}
    md = []
    for seq in (128, "auto"):
        cfg = BenchConfig(data=str(DATA / "test.jsonl"), batch_sizes=[1, 8], seq_len=seq, threads=args.threads,
                          runs=args.runs, warmup=5)
        rep = bench([arts[n] for n in order], cfg)
        console.print(rich_table(rep, title=f"product classifier, seq {seq}"))
        md.append(markdown(rep, title=f"product classifier, seq_len {seq}"))
        rows = {(r.artifact, r.batch_size): r for r in rep.rows}
        acc_fp32 = rows[("trained", 1)].accuracy
        for b in (1, 8):
            # "within 0.5 points": no more than 0.5 points below fp32 (being above is fine)
            int8 = [rows[(n, b)] for n in order if n.startswith("int8") and (acc_fp32 - rows[(n, b)].accuracy) * 100 <= 0.5]
            best = min(int8, key=lambda r: r.p50_ms) if int8 else None
            line = {
                "best_int8": best.artifact if best else None,
                "vs_torch_eager": rows[("trained", b)].p50_ms / best.p50_ms if best else None,
                "vs_plain_onnx": rows[("onnx-plain", b)].p50_ms / best.p50_ms if best else None,
                "accuracy_fp32": acc_fp32, "accuracy_int8": best.accuracy if best else None,
            }
            summary[f"seq={seq} batch={b}"] = line
            console.print(f"seq {seq}, batch {b}: best int8 within 0.5 pt = {line['best_int8']}: "
                          f"{line['vs_torch_eager']:.2f}x vs PyTorch eager fp32, {line['vs_plain_onnx']:.2f}x vs plain fp32 ONNX, "
                          f"accuracy {line['accuracy_int8'] * 100:.2f}% vs fp32 {acc_fp32 * 100:.2f}%")
    print(json.dumps(summary, indent=2))
    if args.md:
        args.md.write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
