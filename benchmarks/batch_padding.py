"""What grouping by length saves in the server's micro-batcher (issue #12: "padding costs more than any other
switch on real inputs").

16 closed-loop clients (asyncio tasks in this process) send one text each, again and again, to
``edgeopt.serve.batcher.MicroBatcher`` running the real model (tokenized per request, padded per batch, ONNX
Runtime), as ``edgeopt serve`` does. The texts are the product classifier's test sentences, with every fifth one
made ~4x longer (a description pasted whole), so lengths are mixed as in real traffic. Two settings, interleaved
over rounds:

- grouped: the batcher as shipped (a batch holds texts within 2x of each other's length, or all under 64 tokens);
- ungrouped: the same batcher with the length rule off (any texts share a batch; padded to the longest).

Reported per setting (medians over rounds): padding efficiency (real tokens / padded tokens), throughput, p50/p99.

    python benchmarks/batch_padding.py --artifact /tmp/srvdemo/int8 [--rounds 3] [--seconds 8] [--threads 2]
"""
import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "product-classifier" / "data" / "test.jsonl"


def texts() -> list[str]:
    rows = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    return [(" ".join([t] * 4) if i % 5 == 0 else t) for i, t in enumerate(rows)]


def run(artifact: Path, grouped: bool, seconds: float, threads: int, clients: int = 16) -> dict:
    import edgeopt.serve.batcher as batcher_mod
    from edgeopt.artifact import load_artifact
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.runtime import load_runtime

    art = load_artifact(artifact)
    pre = Preprocessor(art)
    rt = load_runtime(art, threads=threads)
    pool = texts()
    tokens = pre.tokenize(pool)
    stats = {"real": 0, "padded": 0, "batches": 0}

    def infer(items):
        feeds = pre.collate(items)
        stats["real"] += sum(len(t) for t in items)
        stats["padded"] += feeds["input_ids"].size
        stats["batches"] += 1
        return rt.run(feeds)

    short = batcher_mod.SHORT
    batcher_mod.SHORT = short if grouped else 10**9  # everything "short": the length rule never splits a batch
    lat: list[float] = []

    async def main():
        b = batcher_mod.MicroBatcher(infer, max_batch=16, max_wait_ms=5, max_tokens=2048)
        await b.start()
        stop = time.perf_counter() + seconds

        async def client(k: int):
            i = k
            while time.perf_counter() < stop:
                t = tokens[i % len(tokens)]
                t0 = time.perf_counter()
                await b.submit([t], [len(t)])
                lat.append((time.perf_counter() - t0) * 1000)
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
        await b.stop()
        return wall

    try:
        wall = asyncio.run(main())
    finally:
        batcher_mod.SHORT = short
    return {"efficiency": stats["real"] / stats["padded"], "throughput": len(lat) / wall,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "items_per_batch": len(lat) / stats["batches"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, required=True, help="a text-classification artifact (e.g. the demo's int8)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    res: dict = {"grouped": [], "ungrouped": []}
    for r in range(args.rounds):
        order = ["grouped", "ungrouped"] if r % 2 == 0 else ["ungrouped", "grouped"]
        for name in order:
            res[name].append(run(args.artifact, name == "grouped", args.seconds, args.threads))
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[name][-1].items()), flush=True)
    med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in res.items()}
    g, u = med["grouped"], med["ungrouped"]
    print()
    print(f"16 clients, one text per request, {args.seconds:g} s x {args.rounds} rounds, medians; {args.artifact}")
    print("| batcher | padding efficiency (real / padded tokens) | items per batch | throughput (req/s) | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, m in (("grouped by length (shipped)", g), ("ungrouped", u)):
        print(f"| {n} | {m['efficiency']:.2f} | {m['items_per_batch']:.1f} | {m['throughput']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} |")
    print(f"| grouped / ungrouped | {g['efficiency'] / u['efficiency']:.2f}x | | {g['throughput'] / u['throughput']:.2f}x | "
          f"{g['p50'] / u['p50']:.2f}x | {g['p99'] / u['p99']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
