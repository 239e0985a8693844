"""Helpers shared by the tests of the compression stages (tests/stages).

A plain module with a unique name (not conftest.py) so test modules can import it.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from _support import EDGEOPT_BIN, minilm_dir

LABELS = {0: "a", 1: "b", 2: "c"}

KEYWORDS = {"a": "apple", "b": "river", "c": "guitar"}
FILLER = ["the", "small", "green", "house", "near", "blue", "old", "road", "with", "a", "big", "window",
          "quiet", "morning", "light", "over", "warm", "table", "and", "soft"]


def keyword_rows(n_per_class: int = 20, seed: int = 0) -> list[dict]:
    """A learnable 3-class text task: each sentence holds its class's keyword among shared filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_per_class):
        for label, kw in KEYWORDS.items():
            words = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
            words.insert(int(rng.integers(0, len(words) + 1)), kw)
            rows.append({"text": " ".join(words), "label": label})
    return rows


def cli(*args, cwd: Path | None = None, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {"OMP_NUM_THREADS": "1", **os.environ, "EDGEOPT_QUIET": "1", **(env or {})}
    e.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess, out: Path | None = None, codes=(2,)) -> str:
    """The expected exit code, exactly one stderr line 'error: ...', no traceback, no output (or temp dir) left."""
    assert proc.returncode in codes, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if out is not None:
        assert_no_output(out)
    return lines[0]


def assert_no_output(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    if out.parent.exists():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, leftovers


def tmp_leftovers(folder: Path) -> list[str]:
    """Temporary artifact folders (.NAME.tmp-*, .NAME.old-*) left in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)]


def torch_outputs(module, feeds: dict, names: list[str]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = module(*(torch.from_numpy(feeds[n]) for n in names))
    out = out[0] if isinstance(out, tuple) else out
    return out.detach().cpu().numpy()


def artifact_outputs(art, samples) -> np.ndarray:
    """Outputs of an hf/torch artifact reloaded from disk through edgeopt.models.load_torch_model."""
    from edgeopt.models import load_torch_model
    from edgeopt.models.preprocess import Preprocessor

    pre = Preprocessor(art)
    module = load_torch_model(art).eval()
    return torch_outputs(module, pre(samples), pre.input_names)


def qdq_report(onnx_path: Path) -> dict:
    """What a QDQ graph holds: op counts, the zero points feeding Q/DQ nodes (from initializers or
    Constant nodes), whether any QuantizeLinear still quantizes a weight initializer, and the
    dtypes of the initializers that DequantizeLinear nodes read directly (folded weights)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    inits = {i.name: i for i in m.graph.initializer}
    consts = {}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    zero_points, unresolved, q_on_weights, dq_weight_dtypes = [], [], [], []
    for n in m.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) < 3 or not n.input[2]:
            unresolved.append(f"{n.name}: no zero point input (defaults to uint8)")
            continue
        zp = n.input[2]
        if zp in inits:
            zero_points.append(numpy_helper.to_array(inits[zp]))
        elif zp in consts:
            zero_points.append(consts[zp])
        else:
            unresolved.append(f"{n.name}: zero point {zp} is computed")
        if n.op_type == "QuantizeLinear" and n.input[0] in inits:
            q_on_weights.append(n.input[0])
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            dq_weight_dtypes.append(numpy_helper.to_array(inits[n.input[0]]).dtype)
    int8_weights = [i.name for i in m.graph.initializer
                    if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    return {"ops": ops, "zero_points": zero_points, "unresolved": unresolved, "q_on_weights": q_on_weights,
            "dq_weight_dtypes": dq_weight_dtypes, "int8_weights": int8_weights}


def assert_trt_style_qdq(onnx_path: Path, min_layers: int) -> dict:
    rep = qdq_report(onnx_path)
    assert rep["ops"].get("QuantizeLinear", 0) >= 1 and rep["ops"].get("DequantizeLinear", 0) >= min_layers, rep["ops"]
    assert not rep["unresolved"], rep["unresolved"]
    assert rep["zero_points"], "no zero points found"
    for zp in rep["zero_points"]:
        assert zp.dtype == np.int8, zp.dtype
        assert not np.any(zp), zp
    # Q on weights was constant-folded: weights are stored as int8 and only dequantized.
    assert not rep["q_on_weights"], rep["q_on_weights"]
    assert len(rep["int8_weights"]) >= min_layers, rep["int8_weights"]
    assert rep["dq_weight_dtypes"] and all(d == np.int8 for d in rep["dq_weight_dtypes"])
    return rep


def run_onnx(art, samples) -> np.ndarray:
    """Run an ONNX artifact with ONNX Runtime on ``samples`` through its own preprocessing."""
    import onnxruntime as ort

    from edgeopt.models.preprocess import Preprocessor

    pre = Preprocessor(art)
    sess = ort.InferenceSession(str(art.path / art.manifest.model.file), providers=["CPUExecutionProvider"])
    feeds = pre(samples)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def make_bert_classifier(folder: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=128, num_labels=3, id2label=dict(LABELS),
                     label2id={v: k for k, v in LABELS.items()}, architectures=["BertForSequenceClassification"])
    BertForSequenceClassification(cfg).eval().save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def perturb_adapter(peft_model, std: float = 0.3, seed: int = 0) -> None:
    """Make an adapter that is not a no-op: random LoRA B / LoHa / IA3 weights and a changed head."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or "hada_w" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "ia3_l" in n:
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * std)
            elif "modules_to_save" in n:
                p.add_(torch.randn(p.shape, generator=g) * std)


def load_peft(base: Path, adapter: Path):
    """The reference: the base with the adapter applied by PEFT (not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base)
    return PeftModel.from_pretrained(model, adapter).eval()


def read_manifest(path: Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())



def run_capturing_module(stage_fn, *args, **kwargs):
    """Run a stage that saves through _torch_common.save_module and also return the in-memory
    module it saved (a spy around the real function: the artifact is written as usual)."""
    import copy

    import pytest

    import edgeopt.stages._torch_common as tc

    captured = []
    real = tc.save_module

    def spy(parent, wrapper, out, **kw):
        captured.append(copy.deepcopy(wrapper).eval())
        return real(parent, wrapper, out, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tc, "save_module", spy)
        art = stage_fn(*args, **kwargs)
    assert len(captured) == 1
    return art, captured[0]


def linear_zero_fraction(art) -> float:
    """Fraction of exactly-zero weights over the Linear / Conv2d layers of a reloaded artifact."""
    import torch

    from edgeopt.models import load_torch_model

    module = load_torch_model(art)
    total = zeros = 0
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / total
