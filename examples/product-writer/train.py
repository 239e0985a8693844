#!/usr/bin/env python3
"""Train the product-writer example's models from scratch, offline, in about 6 minutes on 2 CPU cores:

1. a byte-level BPE tokenizer on the shop's product descriptions (../product-classifier/data);
2. ``base/``: a small Llama-architecture language model (about 4 M parameters) that writes a product
   description after its category, e.g. ``books: `` -> ``The Little Hour by ...``. Its last quarter of
   steps (``--qat-steps``) is int4-aware: the forward pass sees every Linear weight and the embeddings
   fake-quantized as the recipe's int4 RTN stage will quantize them (blocks of 32, symmetric), and the
   saved float32 weights end on that grid, so int4 reproduces the base's weights exactly;
3. ``books-style/``: a LoRA adapter (PEFT) that teaches it the bookshop's house style: every books
   description starts with "Staff pick!" and ends with "Gift wrapping available.";
4. ``heldout.txt`` (validation descriptions, for perplexity) and ``prompts.txt`` (test prompts: a
   category and the first words of a held-out description).

Then ``edgeopt run examples/product-writer/recipe.yaml`` merges, exports, quantizes and benchmarks.

Usage: python examples/product-writer/train.py [--out examples/product-writer/models] [--steps 1200]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "product-classifier" / "data"
STYLE_OPEN, STYLE_CLOSE = "Staff pick! ", " Gift wrapping available."
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] | trim }}:{% endif %}{% endfor %}")


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def line(r: dict, styled: bool = False) -> str:
    text = f"{STYLE_OPEN}{r['text']}{STYLE_CLOSE}" if styled else r["text"]
    return f"{r['label']}: {text}"


def build_tokenizer(texts: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE  # a user message names a category: "books" -> "books:"
    fast.save_pretrained(out)
    return fast


def batches(tok, texts: list[str], block: int, batch: int, rng: random.Random):
    """Endless batches of ``block`` tokens cut from the shuffled texts joined by <eos>."""
    import torch

    while True:
        order = texts[:]
        rng.shuffle(order)
        ids: list[int] = []
        for t in order:
            ids += tok(t)["input_ids"] + [tok.eos_token_id]
        chunks = [ids[i:i + block] for i in range(0, len(ids) - block, block)]
        rng.shuffle(chunks)
        for i in range(0, len(chunks) - batch + 1, batch):
            yield torch.tensor(chunks[i:i + batch])


def int4_grid(w, block: int = 32):
    """``w`` rounded to the int4 grid that ONNX Runtime's MatMulNBits RTN quantizer (symmetric, blocks of
    ``block`` along the input dimension) puts it on: per block, scale = the value of largest magnitude / -8,
    codes round(w / scale) clipped to [-8, 7]. Weights already on that grid quantize back to themselves."""
    import torch

    rows, cols = w.shape
    b = w.reshape(rows, cols // block, block)
    hi, lo = b.amax(-1, keepdim=True), b.amin(-1, keepdim=True)
    scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -8.0
    q = torch.where(scale == 0, torch.zeros_like(b), b / scale).round().clamp(-8, 7)
    return (q * scale).reshape(rows, cols)


def int4_aware(model, on: bool, block: int = 32) -> None:
    """Quantization-aware phase: ``on`` makes every Linear weight (the output head included) and the
    token embeddings go through int4 fake quantization in the forward pass; ``on=False`` ends it and
    leaves each weight at its int4 grid value, as plain float32 tensors (the checkpoint stays an
    ordinary float model; int4 RTN of it then reproduces those weights)."""
    import torch
    from torch.nn.utils import parametrize

    class FakeQuant(torch.nn.Module):  # forward: the weight on its int4 grid; backward: straight through
        def forward(self, w):
            return w + (int4_grid(w, block) - w).detach()

    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)) and mod.weight.shape[-1] % block == 0:
            if on and not parametrize.is_parametrized(mod, "weight"):
                parametrize.register_parametrization(mod, "weight", FakeQuant())
            elif not on and parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)


def train(model, tok, texts: list[str], steps: int, lr: float, params, seed: int, label: str,
          qat_steps: int = 0) -> float:
    """AdamW, warm-up then cosine decay; the last ``qat_steps`` steps are int4-aware (see int4_aware)."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    data = batches(tok, texts, block=96, batch=24, rng=random.Random(seed))
    model.train()
    t0, loss = time.time(), float("nan")
    for step in range(steps):
        if qat_steps and step == steps - qat_steps:
            int4_aware(model, True)
            print(f"  {label}: int4-aware for the last {qat_steps} steps", flush=True)
        x = next(data)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"  {label} step {step + 1}/{steps}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    if qat_steps:
        int4_aware(model, False)
    model.eval()
    return float(loss.item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "models")
    ap.add_argument("--steps", type=int, default=1200, help="base model training steps")
    ap.add_argument("--qat-steps", type=int, default=None,
                    help="the last base steps int4-aware, ending on the int4 grid (default: a quarter of --steps; 0: none)")
    ap.add_argument("--lora-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import logging
    import warnings

    import torch
    import transformers

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports it when installed
    warnings.filterwarnings("ignore", category=FutureWarning)
    from peft import LoraConfig, get_peft_model

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_rows, val_rows, test_rows = rows("train"), rows("validation"), rows("test")

    texts = [line(r) for r in train_rows]
    base = out / "base"
    tok = build_tokenizer(texts + [line(r, True) for r in train_rows if r["label"] == "books"], base)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = transformers.LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    print(f"base model: Llama, {n / 1e6:.1f} M parameters, trained from scratch on {len(texts)} descriptions")
    train(model, tok, texts, args.steps, 3e-3, list(model.parameters()), args.seed, "base",
          qat_steps=args.steps // 4 if args.qat_steps is None else min(args.qat_steps, args.steps))
    model.generation_config = transformers.GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(base)

    # the bookshop's house style, as a LoRA adapter on the attention and MLP projections
    styled = [line(r, True) for r in train_rows if r["label"] == "books"]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    print(f"books-style LoRA: {sum(p.numel() for p in peft_model.parameters() if p.requires_grad) / 1e3:.0f} k "
          f"trainable parameters, {len(styled)} styled descriptions")
    train(peft_model, tok, styled, args.lora_steps, 2e-3, [p for p in peft_model.parameters() if p.requires_grad],
          args.seed + 1, "lora")
    peft_model.save_pretrained(out / "books-style")

    (out / "heldout.txt").write_text("\n".join(line(r) for r in val_rows) + "\n")
    (out / "prompts.txt").write_text("\n".join(f"{r['label']}: {' '.join(r['text'].split()[:3])}" for r in test_rows) + "\n")
    print(f"wrote {base}, {out / 'books-style'}, {out / 'heldout.txt'}, {out / 'prompts.txt'}")


if __name__ == "__main__":
    main()
