"""Which exporter for language models: ONNX Runtime GenAI's model builder (what `edgeopt export` uses)
against a plain ``torch.onnx`` export of the same checkpoint (the decoder with flat past/present key
and value tensors, prefill and decode in one graph, run step by step by an ONNX Runtime session).

Both are checked against PyTorch (greedy tokens on the prompts) and timed on the same prompt ids
(time to first token, decode tokens/s), interleaved over --rounds, at --threads threads; end-of-sequence
is never chosen, so every run generates exactly --new-tokens.

    python benchmarks/llm_exporters.py examples/product-writer/runs/merged examples/product-writer/runs/onnx \\
        --prompts examples/product-writer/models/prompts.txt
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def export_plain(folder: Path, out: Path) -> None:
    """torch.onnx (TorchScript exporter, opset 17) of the causal LM with a flat KV cache."""
    import torch
    import transformers
    from transformers import DynamicCache

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = model.config
    n_layers, kvh = cfg.num_hidden_layers, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class Flat(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            res = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            flat = []
            for layer in res.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (res.logits, *flat)

    past = [torch.zeros(1, kvh, 2, hd) for _ in range(2 * n_layers)]
    ids = torch.tensor([[5, 6, 7]])
    names_in = ["input_ids", "attention_mask", "position_ids"] + [f"past.{i}.{k}" for i in range(n_layers) for k in "kv"]
    names_out = ["logits"] + [f"present.{i}.{k}" for i in range(n_layers) for k in "kv"]
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
           "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dyn.update({n: {0: "batch", 2: "past"} for n in names_in[3:]})
    dyn.update({n: {0: "batch", 2: "total"} for n in names_out[1:]})
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(Flat(model), (ids, torch.ones(1, 5, dtype=torch.int64), torch.arange(2, 5)[None], *past),
                          str(out), input_names=names_in, output_names=names_out, dynamic_axes=dyn, opset_version=17,
                          dynamo=False)


class PlainRunner:
    def __init__(self, path: Path, folder: Path, threads: int):
        import onnxruntime as ort

        cfg = json.loads((folder / "config.json").read_text())
        self.layers, self.kvh = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        self.eos = [eos] if isinstance(eos, int) else list(eos or [])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        past = [np.zeros((1, self.kvh, 0, self.hd), np.float32) for _ in range(2 * self.layers)]
        out, cur, pos, first = [], list(ids), 0, None
        t0 = time.perf_counter()
        for _ in range(n):
            total = pos + len(cur)
            feeds = {"input_ids": np.array([cur], np.int64), "attention_mask": np.ones((1, total), np.int64),
                     "position_ids": np.arange(pos, total, dtype=np.int64)[None]}
            for i in range(self.layers):
                feeds[f"past.{i}.k"], feeds[f"past.{i}.v"] = past[2 * i], past[2 * i + 1]
            res = self.sess.run(None, feeds)
            logits, past = res[0][0, -1].copy(), res[1:]
            logits[self.eos] = -np.inf
            nxt = int(logits.argmax())
            first = first or time.perf_counter()
            out.append(nxt)
            pos, cur = total, [nxt]
        end = time.perf_counter()
        return out, (first - t0) * 1000, (n - 1) / (end - first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf", type=Path, help="the Hugging Face causal-LM folder")
    ap.add_argument("builder", type=Path, help="its `edgeopt export` (ONNX Runtime GenAI model builder) folder")
    ap.add_argument("--prompts", type=Path, required=True, help=".txt, one prompt per line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-length", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--greedy-prompts", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from edgeopt.llm.generate import GenerateConfig, load_generator

    with tempfile.TemporaryDirectory(prefix="edgeopt-plain-export-") as tmp:
        plain_path = Path(tmp) / "model.onnx"
        t = time.perf_counter()
        export_plain(args.hf, plain_path)
        print(f"plain torch.onnx export: {time.perf_counter() - t:.1f} s, {plain_path.stat().st_size / 1e6:.1f} MB")
        plain = PlainRunner(plain_path, args.hf, args.threads)
        ref, builder = load_generator(args.hf), load_generator(args.builder, threads=args.threads)
        prompts = [p.strip() for p in args.prompts.read_text().splitlines() if p.strip()]
        cfg = GenerateConfig(max_new_tokens=32, ignore_eos=True)
        same_plain = same_builder = 0
        for p in prompts[: args.greedy_prompts]:
            want = ref.generate(p, cfg).tokens
            _, ids = ref.prompt_ids(p, False)
            same_plain += plain.generate(ids, 32)[0] == want
            same_builder += builder.generate(p, cfg).tokens == want
        n = min(len(prompts), args.greedy_prompts)
        print(f"greedy 32 tokens identical to PyTorch: plain {same_plain}/{n}, builder {same_builder}/{n}")
        ids = ref.tok(" ".join(prompts))["input_ids"]
        ids = (ids * (args.prompt_length // max(1, len(ids)) + 1))[: args.prompt_length]
        gcfg = GenerateConfig(max_new_tokens=args.new_tokens, ignore_eos=True)
        rows: dict[str, list[tuple[float, float]]] = {"plain": [], "builder": []}
        for r in range(args.rounds):  # interleaved; each warmed by one untimed run
            for name in (["plain", "builder"] if r % 2 == 0 else ["builder", "plain"]):
                for timed in (False, True):
                    if name == "plain":
                        _, ttft, tps = plain.generate(ids, args.new_tokens)
                    else:
                        run = builder.stream("", gcfg, ids=ids)
                        for _ in run:
                            pass
                        ttft, tps = run.result.time_to_first_token_ms, run.result.decode_tokens_per_s
                    if timed:
                        rows[name].append((ttft, tps))
        med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in rows.items()}
        print(f"prompt {args.prompt_length}, {args.new_tokens} new tokens, {args.threads} threads, {args.rounds} rounds:")
        for k, (ttft, tps) in med.items():
            print(f"  {k:8s} TTFT p50 {ttft:7.1f} ms   decode {tps:7.0f} tok/s")
        print(f"builder / plain: decode {med['builder'][1] / med['plain'][1]:.2f}x, TTFT {med['plain'][0] / med['builder'][0]:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
