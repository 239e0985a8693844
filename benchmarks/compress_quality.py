"""Issue #3 quality/speed check for the compression stages, on both examples.

Runs (or reuses, from the recipe cache) examples/product-classifier/compress.yaml and
examples/digits/recipe.yaml, re-benchmarks the relevant artifacts at batch 8 with 2 threads,
and prints the figures the issue asks for:
  * QAT int8 test accuracy vs fp32 (within 0.5 points) and vs static PTQ (not below);
  * structured pruning (30% neurons / channels) + recovery: speedup at batch 8 (>= 1.2x) and accuracy loss (<= 1.5 points);
  * 3-layer student from the 6-layer classifier: accuracy retained (>= 97%) and speedup (>= 1.7x).

    python benchmarks/compress_quality.py [--runs 100] [--md out.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from edgeopt.artifact import load_artifact
from edgeopt.bench.core import BenchConfig, bench
from edgeopt.bench.report import markdown, rich_table
from edgeopt.recipe import run_recipe

ROOT = Path(__file__).resolve().parents[1]


def acc_of(art) -> float:
    m = art.manifest.metrics
    for path in (("eval", "accuracy"), ("after", "accuracy"), ("student", "accuracy"), ("test_accuracy",)):
        v = m
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            return float(v)
    raise KeyError(f"no accuracy recorded in {art.path}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    con = Console(width=200)
    out_md = []
    checks = []

    def check(name, value, ok, fmt="{:.4f}"):
        checks.append((name, fmt.format(value), "PASS" if ok else "FAIL"))

    # ---- product classifier (MiniLM-L6, 6 layers) ----
    pc = {s.name: s.path for s in run_recipe(ROOT / "examples/product-classifier/compress.yaml").stages}
    fp32_acc = load_artifact(pc["pruned"]).manifest.metrics["before"]["accuracy"]
    qat_acc = acc_of(load_artifact(pc["qat"]))
    ptq_acc = acc_of(load_artifact(pc["int8-static"]))
    check("product: QAT int8 accuracy - fp32 (points)", (qat_acc - fp32_acc) * 100, qat_acc >= fp32_acc - 0.005, "{:+.2f}")
    check("product: QAT int8 accuracy - static PTQ int8 (points)", (qat_acc - ptq_acc) * 100, qat_acc >= ptq_acc, "{:+.2f}")
    pr = load_artifact(pc["pruned"]).manifest.metrics
    check("product: pruning accuracy loss (points)", pr["accuracy_drop_points"], pr["accuracy_drop_points"] <= 1.5, "{:.2f}")
    st = load_artifact(pc["student"]).manifest.metrics
    check("product: student accuracy retained", st["accuracy_retained"], st["accuracy_retained"] >= 0.97)

    cfg = BenchConfig(data=str(ROOT / "examples/product-classifier/data/test.jsonl"), batch_sizes=[8], threads=2,
                      runs=args.runs, warmup=5)
    for fmt, names in (("torch", ["merged", "pruned", "student"]), ("onnx", ["onnx", "pruned-onnx", "student-onnx"])):
        rep = bench([pc[n] for n in names], cfg)
        con.print(rich_table(rep, title=f"product classifier, {fmt} fp32, batch 8"))
        out_md.append(markdown(rep, title=f"product classifier, {fmt} fp32, batch 8"))
        rows = {r.artifact: r for r in rep.rows}
        base = rows[names[0]].p50_ms
        check(f"product: pruned speedup b8 ({fmt})", base / rows[names[1]].p50_ms, base / rows[names[1]].p50_ms >= 1.2, "{:.2f}x")
        check(f"product: student speedup b8 ({fmt})", base / rows[names[2]].p50_ms, base / rows[names[2]].p50_ms >= 1.7, "{:.2f}x")

    # ---- digits CNN ----
    dg = {s.name: s.path for s in run_recipe(ROOT / "examples/digits/recipe.yaml").stages}
    d_fp32 = load_artifact(dg["trained"]).manifest.metrics["test_accuracy"]
    d_qat, d_ptq = acc_of(load_artifact(dg["qat"])), acc_of(load_artifact(dg["int8"]))
    check("digits: QAT int8 accuracy - fp32 (points)", (d_qat - d_fp32) * 100, d_qat >= d_fp32 - 0.005, "{:+.2f}")
    check("digits: QAT int8 accuracy - static PTQ int8 (points)", (d_qat - d_ptq) * 100, d_qat >= d_ptq, "{:+.2f}")
    dpr = load_artifact(dg["pruned"]).manifest.metrics
    check("digits: channel pruning accuracy loss (points)", dpr["accuracy_drop_points"], dpr["accuracy_drop_points"] <= 1.5, "{:.2f}")
    rep = bench([dg["trained"], dg["pruned"], dg["student"]],
                BenchConfig(data="sklearn:digits:test", batch_sizes=[8], threads=2, runs=args.runs * 5, warmup=20))
    con.print(rich_table(rep, title="digits, torch fp32, batch 8"))
    out_md.append(markdown(rep, title="digits, torch fp32, batch 8"))
    rows = {r.artifact: r for r in rep.rows}
    check("digits: pruned speedup b8 (torch)", rows["trained"].p50_ms / rows["pruned"].p50_ms,
          rows["trained"].p50_ms / rows["pruned"].p50_ms >= 1.2, "{:.2f}x")

    con.print()
    table = ["| check | value | result |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in checks]
    con.print("\n".join(table))
    if args.md:
        args.md.write_text("\n".join(table) + "\n\n" + "\n".join(out_md))
    print(json.dumps({a: b for a, b, _ in checks}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
