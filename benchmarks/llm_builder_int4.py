"""Which int4 for language models: ONNX Runtime GenAI's model builder writing int4 itself (``-p int4``, from
the Hugging Face folder) against edgeopt's route (the builder's fp32 graph, then `edgeopt quantize --weights
int4`: ONNX Runtime's MatMulNBits quantizer, int4 embeddings too).

Each int4 model is compared with PyTorch fp32 on the prompts (the first --greedy-tokens greedy tokens
identical; end-of-sequence ends both alike) and timed on the same prompt ids (time to first token and
decode tokens/s, end-of-sequence never chosen), interleaved over --rounds at --threads threads.

    python benchmarks/llm_builder_int4.py examples/product-writer/runs/merged examples/product-writer/runs/int4 \\
        --prompts examples/product-writer/models/prompts.txt
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def builder_int4(hf: Path, ours: Path, out: Path, block: int, level: int) -> Path:
    """The builder's own int4 of ``hf``, in a copy of our int4 artifact's folder (its manifest and tokenizer;
    model files and genai_config.json replaced) so that edgeopt's generator runs both the same way."""
    from edgeopt.llm.export import build

    raw = out.parent / "builder-raw"
    t = time.perf_counter()
    build(hf, raw, "int4", {"int4_block_size": block, "int4_accuracy_level": level})
    print(f"builder -p int4 (block {block}, accuracy level {level}): {time.perf_counter() - t:.1f} s")
    shutil.copytree(ours, out)
    for f in ("model.onnx", "model.onnx.data", "genai_config.json"):
        (out / f).unlink(missing_ok=True)
        if (raw / f).is_file():
            shutil.copy(raw / f, out / f)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"]["quantization"] = {"weights": "int4", "tool": "onnxruntime-genai model builder -p int4",
                                         "block_size": block, "accuracy_level": level}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def size_mb(folder: Path) -> float:
    return sum((folder / f).stat().st_size for f in ("model.onnx", "model.onnx.data") if (folder / f).is_file()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf", type=Path, help="the (merged) Hugging Face causal-LM folder: the fp32 reference")
    ap.add_argument("ours", type=Path, help="its `edgeopt quantize --weights int4` folder")
    ap.add_argument("--prompts", type=Path, required=True, help=".txt, one prompt per line")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--accuracy-level", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-length", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from edgeopt.artifact import load_artifact
    from edgeopt.llm.generate import GenerateConfig, load_generator

    with tempfile.TemporaryDirectory(prefix="edgeopt-builder-int4-") as tmp:
        theirs = builder_int4(args.hf, args.ours, Path(tmp) / "builder-int4", args.block_size, args.accuracy_level)
        gens = {"edgeopt int4": load_generator(args.ours, threads=args.threads),
                "builder -p int4": load_generator(load_artifact(theirs, verify=False), threads=args.threads)}
        ref = load_generator(args.hf)
        prompts = [p.strip() for p in args.prompts.read_text().splitlines() if p.strip()]
        cfg = GenerateConfig(max_new_tokens=args.greedy_tokens)
        want = [ref.generate(p, cfg).tokens for p in prompts]
        same = {k: sum(g.generate(p, cfg).tokens == w for p, w in zip(prompts, want)) for k, g in gens.items()}
        ids = ref.tok(" ".join(prompts))["input_ids"]
        ids = (ids * (args.prompt_length // max(1, len(ids)) + 1))[: args.prompt_length]
        gcfg = GenerateConfig(max_new_tokens=args.new_tokens, ignore_eos=True)
        rows: dict[str, list[tuple[float, float]]] = {k: [] for k in gens}
        for r in range(args.rounds):  # interleaved; each warmed by one untimed run
            for name in (list(gens) if r % 2 == 0 else list(reversed(gens))):
                for timed in (False, True):
                    run = gens[name].stream("", gcfg, ids=ids)
                    for _ in run:
                        pass
                    if timed:
                        rows[name].append((run.result.time_to_first_token_ms, run.result.decode_tokens_per_s))
        sizes = {"edgeopt int4": size_mb(args.ours), "builder -p int4": size_mb(theirs)}
        print(f"fp32 reference: {args.hf}; {len(prompts)} prompts; prompt {args.prompt_length}, {args.new_tokens} new "
              f"tokens, {args.threads} threads, {args.rounds} interleaved rounds")
        print(f"| int4 | greedy {args.greedy_tokens} tokens = fp32 | TTFT p50 ms | decode tok/s | size MB |")
        print("|---|---|---|---|---|")
        for k, v in rows.items():
            ttft, tps = statistics.median(a for a, _ in v), statistics.median(b for _, b in v)
            print(f"| {k} | {same[k]}/{len(prompts)} ({same[k] / len(prompts):.0%}) | {ttft:.1f} | {tps:.0f} | {sizes[k]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
