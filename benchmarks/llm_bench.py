"""Issue #13's bench: a language model's ONNX Runtime GenAI artifacts (fp32 export, int4) against PyTorch
eager fp32 ``generate`` of the Hugging Face checkpoint, at --threads (default 2) threads.

For each prompt length (default 128 and 512 tokens of real product text, the same ids for every contender)
every contender generates exactly --new-tokens (default 128) tokens greedily, end-of-sequence never chosen:
time to first token (p50), decode tokens/s (median), end-to-end seconds, peak RSS of its own process and size
on disk, and the ratios against PyTorch ``generate`` (the first contender). It is ``edgeopt.bench.llm.bench_llm``
with rounds: each round runs every contender once more in a fresh process (--runs generations per prompt length
after --warmup), the order rotated every round, so a burst of other work on the shared machine hits all
contenders alike; the figures pool all rounds. The goal the issue sets: int4 decode tokens/s >= 3x PyTorch
``generate``, model files >= 5x smaller.

    python benchmarks/llm_bench.py HF_FOLDER --artifact fp32=GENAI_DIR --artifact int4=INT4_DIR [--rounds 3]
    python benchmarks/llm_bench.py HF_FOLDER --workdir runs/llm-bench   # exports the fp32 genai folder itself
    python benchmarks/llm_bench.py examples/product-writer/runs/merged --artifact int4=examples/product-writer/runs/int4 \
        --prompts examples/product-writer/models/prompts.txt    # + greedy identity on the test prompts
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from _procs import print_report  # benchmarks/ is on sys.path when a script runs
from edgeopt.bench.llm import LLMBenchConfig, bench_llm, markdown, rich_table

ROOT = Path(__file__).resolve().parents[1]
GOAL_DECODE, GOAL_SIZE = 3.0, 5.0  # int4 vs PyTorch generate


def contenders(args) -> dict[str, Path]:
    arts = {"pytorch": args.hf}
    for spec in args.artifact:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--artifact {spec!r}: give NAME=DIR, e.g. int4=runs/llm/int4")
        arts[name] = Path(path)
    if len(arts) == 1:
        if not args.workdir:
            sys.exit("give --artifact NAME=DIR (an `edgeopt export` of the model, its int4) or --workdir to export one")
        out = args.workdir / "genai-fp32"
        if not (out / "manifest.json").exists():
            from edgeopt.stages.export import export

            export(args.hf, out)
        arts["genai-fp32"] = out
    return arts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf", type=Path, help="the Hugging Face causal-LM checkpoint folder (the PyTorch baseline)")
    ap.add_argument("--artifact", action="append", default=[], help="NAME=DIR: a genai artifact to compare (repeat)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to export the fp32 genai folder when no --artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-lengths", default="128,512")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3, help="timed generations per prompt length per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed generations per prompt length per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (a fresh process per contender each)")
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--prompts", type=Path, default=None, help="a .txt of test prompts (one per line): how many keep "
                    "PyTorch fp32's first --greedy-tokens greedy tokens in each artifact (the issue's fidelity goal)")
    ap.add_argument("--greedy-tokens", type=int, default=32)
    args = ap.parse_args()
    arts = contenders(args)
    cfg = LLMBenchConfig(prompt_lengths=[int(x) for x in args.prompt_lengths.split(",") if x.strip()],
                         new_tokens=args.new_tokens, threads=args.threads, runs=args.runs, warmup=args.warmup,
                         rounds=args.rounds)
    rep = bench_llm(list(arts.values()), cfg)
    names = {str(p.resolve()): n for n, p in arts.items()}
    for r in rep.rows:  # the contenders' names, not their folder names
        r.artifact = names.get(str(Path(r.path).resolve()), r.artifact)
    title = f"{args.hf.name}: vs PyTorch generate (fp32 eager), {args.threads} threads"
    Console(width=250).print(rich_table(rep, title=title))
    print()
    for r in rep.rows[len(cfg.prompt_lengths):]:
        ok = r.decode_speedup >= GOAL_DECODE and r.size_ratio >= GOAL_SIZE
        print(f"{r.artifact} ({r.precision}), prompt {r.prompt_tokens}: decode {r.decode_speedup:.2f}x "
              f"(goal >= {GOAL_DECODE:g}x), {r.size_ratio:.2f}x smaller (goal >= {GOAL_SIZE:g}x), TTFT "
              f"{r.ttft_speedup:.2f}x: {'meets' if ok else 'misses'} the int4 goal")
    if args.prompts:
        greedy_identity(arts, args.prompts, args.greedy_tokens)
    print_report(markdown(rep, title), args.md)
    return 0


def greedy_identity(arts: dict[str, Path], prompts: Path, tokens: int) -> None:
    """Greedy continuations of every prompt, ``tokens`` long: identical to PyTorch fp32's (the first
    contender) on what share of the prompts? End-of-sequence ends both early alike."""
    from edgeopt.llm.generate import GenerateConfig, load_generator

    texts = [t.strip() for t in prompts.read_text().splitlines() if t.strip()]
    cfg = GenerateConfig(max_new_tokens=tokens)
    names = list(arts)
    ref = load_generator(arts[names[0]])
    want = [ref.generate(t, cfg).tokens for t in texts]
    for name in names[1:]:
        gen = load_generator(arts[name])
        same = sum(gen.generate(t, cfg).tokens == w for t, w in zip(texts, want))
        print(f"{name}: greedy {tokens} tokens identical to PyTorch fp32 on {same}/{len(texts)} prompts "
              f"({same / len(texts):.1%}; goal >= 90%)")


if __name__ == "__main__":
    sys.exit(main())
