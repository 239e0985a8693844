"""Language models through the whole flow: a LoRA (or QLoRA) adapter merged onto each family's tiny
config, exported with its KV cache, quantized to int4 / int8 weights, and generated from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _support import LM_FAMILIES as FAMILIES, LM_PROMPT as PROMPT, build_tiny_lm
from edgeopt.artifact import load_artifact
from edgeopt.llm.generate import GenerateConfig, generate
from test_cli import assert_clean_failure, cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("onnxruntime_genai")

CALIB = ["Organic green tea, 100 bags, from Darjeeling.", "Wireless headphones with noise cancelling and 30 hours of battery.",
         "Stainless steel kitchen knife with a 20 cm blade.", "Cotton t-shirt, slim fit, machine washable.",
         "Espresso machine with a 15 bar pump and a milk frother."]


def _adapter(base: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA adapter on every linear layer, with random (non-zero) B so that merging changes the model."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                                    init_lora_weights=False))
    pm.save_pretrained(out)
    return out


def _logits(folder: Path, text: str) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].numpy()


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("lm-text") / "texts.txt"
    f.write_text("\n".join(CALIB * 2) + "\n")
    return f


@pytest.mark.parametrize("family", list(FAMILIES))
def test_merge_export_int4_generate(tiny_lms, family, tmp_path, texts):
    base = tiny_lms[family]
    adapter = _adapter(base, tmp_path / "adapter")
    merged = tmp_path / "merged"
    p = cli("merge", base, "--adapter", adapter, "-o", merged)
    assert p.returncode == 0, p.stderr
    m = load_artifact(merged).manifest
    assert m.task == "text-generation" and m.format == "hf" and m.lineage[-1].stage == "merge"
    check = m.metrics["numeric_check"]
    assert check["against"].startswith("peft model") and check["outputs"]["logits"]["next_token_agreement"] == 1.0
    assert check["outputs"]["logits"]["max_abs_err"] < 1e-3 and check["positions"] > 50
    # the merge changed the model (the adapter is not a no-op) and matches PEFT's own merged logits
    assert not np.allclose(_logits(base, PROMPT), _logits(merged, PROMPT), atol=1e-3)
    assert (merged / "tokenizer.json").is_file() and transformers.AutoTokenizer.from_pretrained(merged).chat_template

    onnx_dir, int4 = tmp_path / "onnx", tmp_path / "int4"
    p = cli("export", merged, "-o", onnx_dir)
    assert p.returncode == 0, p.stderr
    p = cli("quantize", onnx_dir, "-o", int4, "--weights", "int4", "--block-size", "16", "--eval-data", texts, "--json")
    assert p.returncode == 0, p.stderr
    q = load_artifact(int4).manifest
    assert q.format == "genai" and q.model.precision == "int4" and q.lineage[-1].stage == "quantize-weights"
    info = q.model.quantization
    assert info["weights"] == "int4" and info["algorithm"] == "rtn" and info["block_size"] == 16
    assert info["matmul_nbits_nodes"] >= 2 * 3  # attention and MLP projections of both layers, at least
    ev = q.metrics["eval"]
    assert ev["data"].endswith("texts.txt") and ev["texts"] == 10 and ev["tokens"] > 50
    assert ev["parent_perplexity"] > 1 and ev["perplexity"] > 1 and 0 <= ev["top1_agreement"] <= 1
    assert q.metrics["size_ratio"] > 2
    import onnx

    ops = {n.op_type for n in onnx.load(str(int4 / "model.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    res = generate(int4, PROMPT, GenerateConfig(max_new_tokens=8))
    assert res.backend == "onnxruntime-genai" and 1 <= len(res.tokens) <= 8
    p = cli("generate", int4, "--prompt", PROMPT, "--max-new-tokens", "4", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backend"] == "onnxruntime-genai"


@pytest.fixture(scope="module")
def llama_onnx(tiny_lms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llama-onnx") / "onnx"
    p = cli("export", tiny_lms["llama"], "-o", out)
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.parametrize("args", [["--weights", "int8"], ["--weights", "int4", "--algorithm", "hqq"],
                                  ["--weights", "int4", "--algorithm", "gptq", "--calib", "TEXTS"],
                                  ["--weights", "int4", "--no-lm-head", "--no-embeddings", "--accuracy-level", "1"]])
def test_weight_algorithms(llama_onnx, tmp_path, texts, args):
    out = tmp_path / "q"
    args = [str(texts) if a == "TEXTS" else a for a in args]
    p = cli("quantize", llama_onnx, "-o", out, *args, "--block-size", "32")
    assert p.returncode == 0, p.stderr
    assert "perplexity" in p.stdout and "top-1 agreement" in p.stdout and "Progress" not in p.stdout
    q = load_artifact(out).manifest.model.quantization
    import onnx

    g = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
    bits = {a.i for n in nbits for a in n.attribute if a.name == "bits"}
    levels = {a.i for n in nbits for a in n.attribute if a.name == "accuracy_level"}
    if "int8" in args:
        assert q["weights"] == "int8" and bits == {8} and q["embeddings"] == "float"
    else:
        assert bits == {4}
    if "--no-lm-head" in args:
        assert q["lm_head"] == "float" and levels == {1}
        assert [n.name for n in g.node if n.op_type == "MatMul"] == [n.name for n in g.node if "lm_head" in n.name]
        assert q["embeddings"] == "float" and not any(n.op_type == "GatherBlockQuantized" for n in g.node)
    else:
        assert levels == {4}
    if "gptq" in args:
        assert q["algorithm"] == "gptq" and q["calibration"].endswith("texts.txt")
    generate(out, PROMPT, GenerateConfig(max_new_tokens=4))


def test_int4_embeddings_make_it_smaller(llama_onnx, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("quantize", llama_onnx, "-o", a, "--weights", "int4").returncode == 0
    assert cli("quantize", llama_onnx, "-o", b, "--weights", "int4", "--no-embeddings").returncode == 0
    ma, mb = load_artifact(a).manifest, load_artifact(b).manifest
    assert ma.model.quantization["embeddings"] == "int4" and mb.model.quantization["embeddings"] == "float"
    assert ma.metrics["size_bytes"] < mb.metrics["size_bytes"] < ma.metrics["parent_size_bytes"]


def test_quantize_limits_and_bad_inputs(llama_onnx, tiny_lms, cls_onnx, tmp_path, texts):
    out = tmp_path / "q"
    line = assert_clean_failure(cli("quantize", llama_onnx, "-o", out, "--weights", "int4", "--min-agreement", "1.0",
                                    "--no-embeddings", "--block-size", "128"), out, codes=(1,))
    assert "--min-agreement" in line and "nothing was written" in line
    assert "--max-perplexity-increase" in assert_clean_failure(
        cli("quantize", llama_onnx, "-o", out, "--weights", "int4", "--max-perplexity-increase", "-1"), out, codes=(2,))
    bad = [(["--weights", "int4", "--algorithm", "gptq"], "needs calibration text"),
           (["--weights", "int8", "--algorithm", "hqq"], "int4"),
           (["--weights", "int4", "--block-size", "48"], "power of two"),
           (["--weights", "int4", "--algorithm", "hqq", "--embeddings"], "MatMul weights only"),
           (["--weights", "int4", "--calib", str(texts)], "--calib"),
           (["--weights", "int4", "--ptq", "static"], "--ptq"),
           (["--weights", "int4", "--exclude-nodes", "nope"], "no node of that name"),
           (["--weights", "int4", "--eval-data", str(tmp_path / "missing.txt")], "missing.txt"),
           ([], "--weights int4")]
    for args, want in bad:
        assert want in assert_clean_failure(cli("quantize", llama_onnx, "-o", out, *args), out, codes=(2,)), args
    assert "--ptq" in assert_clean_failure(cli("quantize", cls_onnx.path, "-o", out, "--weights", "int4"), out, codes=(2,))
    assert "--block-size" in assert_clean_failure(cli("quantize", cls_onnx.path, "-o", out, "--block-size", "32"), out, codes=(2,))
    done = tmp_path / "int4"
    assert cli("quantize", llama_onnx, "-o", done, "--weights", "int4").returncode == 0
    assert "already quantized" in assert_clean_failure(cli("quantize", done, "-o", out, "--weights", "int4"), out, codes=(2,))


def test_adapter_for_another_base_names_the_modules(tiny_lms, tmp_path, lm_tokenizer, text_jsonl):
    wide = build_tiny_lm(tmp_path, "llama", lm_tokenizer, hidden_size=128)  # same family, other width
    adapter = _adapter(wide, tmp_path / "wide-adapter")
    out = tmp_path / "m"
    line = assert_clean_failure(cli("merge", tiny_lms["llama"], "--adapter", adapter, "-o", out), out, codes=(2,))
    assert "trained for another base model" in line and "input features" in line and "base has 64" in line
    # an adapter of another family: its modules are not in the base
    adapter2 = _adapter(tiny_lms["phi3"], tmp_path / "phi3-adapter")
    line = assert_clean_failure(cli("merge", tiny_lms["llama"], "--adapter", adapter2, "-o", out), out, codes=(2,))
    assert "not in the base model" in line and line.count("gate_up_proj") == 1 or "qkv_proj" in line


def test_causal_lm_adapter_onto_a_classifier_is_refused(tiny_lms, tiny_text_classifier, tmp_path):
    adapter = _adapter(tiny_lms["llama"], tmp_path / "a")
    out = tmp_path / "m"
    line = assert_clean_failure(cli("merge", tiny_text_classifier, "--adapter", adapter, "-o", out), out, codes=(2,))
    assert "CAUSAL_LM adapter" in line and "text-classification" in line


def test_qlora_adapter_trained_on_a_4bit_base_merges_into_float_weights(tiny_lms, tmp_path):
    """QLoRA as people run it: the base loaded in 4-bit NF4 (bitsandbytes), LoRA trained on top; the
    adapter is then merged into the float32 base it was quantized from."""
    pytest.importorskip("bitsandbytes")
    base = tiny_lms["qwen2"]
    tok = transformers.AutoTokenizer.from_pretrained(base)
    q = transformers.AutoModelForCausalLM.from_pretrained(
        base, device_map="cpu", quantization_config=transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    assert any(type(m).__name__ == "Linear4bit" for m in q.modules())
    q = peft.prepare_model_for_kbit_training(q, use_gradient_checkpointing=False)
    model = peft.get_peft_model(q, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"],
                                                   task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    batch = tok(CALIB, return_tensors="pt", padding=True)
    for _ in range(8):
        loss = model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(tmp_path / "qlora")
    out = tmp_path / "merged"
    p = cli("merge", base, "--adapter", tmp_path / "qlora", "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    m = load_artifact(out).manifest
    assert m.metrics["numeric_check"]["outputs"]["logits"]["next_token_agreement"] == 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg  # full precision weights
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
        assert not any("lora" in k for k in f.keys())
    assert not np.allclose(_logits(base, PROMPT), _logits(out, PROMPT), atol=1e-4)  # the training moved it
    # or kept unmerged: exported beside the float base, checked against the PEFT model, its factors int8
    p = cli("export", base, "--adapter", tmp_path / "qlora", "-o", tmp_path / "lora-onnx")
    assert p.returncode == 0, p.stderr
    assert load_artifact(tmp_path / "lora-onnx").manifest.metrics["check"]["greedy_identical_all"]
    p = cli("quantize", tmp_path / "lora-onnx", "-o", tmp_path / "lora-int4", "--weights", "int4", "--block-size", "16")
    assert p.returncode == 0, p.stderr
    a = load_artifact(tmp_path / "lora-int4").manifest.model.quantization["adapter"]
    assert a["weights"] == "int8" and a["quantized"] == a["matmuls"] == 12  # A and B of q, v, up in both layers
    # a base stored quantized is refused with the fix
    qdir = tmp_path / "q4"
    q.save_pretrained(qdir)
    tok.save_pretrained(qdir)
    line = assert_clean_failure(cli("merge", qdir, "--adapter", tmp_path / "qlora", "-o", tmp_path / "x"), codes=(2,))
    assert "stored quantized" in line and "full-precision" in line


def test_package_of_a_language_model(llama_onnx, tiny_lms, tmp_path):
    """A CPU target's bundle holds ONNX Runtime GenAI and jinja2 for the target's platform, not torch or
    transformers; a checkpoint that is not exported, or a GPU target, is refused in one line."""
    p = cli("package", llama_onnx, "--target", "rpi5", "-o", tmp_path / "bundle", "--json", timeout=900)
    assert p.returncode == 0, p.stderr
    b = json.loads(p.stdout)
    assert b["model"]["task"] == "text-generation" and b["platform"] == "linux/arm64"
    assert {"onnxruntime-genai", "jinja2", "onnxruntime", "tokenizers", "fastapi"} <= set(b["packages"])
    assert not {"torch", "transformers", "onnx-ir", "pillow"} & set(b["packages"])
    assert any(f.startswith("wheels/onnxruntime_genai-") and f.endswith("aarch64.whl") for f in b["files"])
    assert "model/genai_config.json" in b["files"] and "model/tokenizer.json" in b["files"]
    out = tmp_path / "refused"
    line = assert_clean_failure(cli("package", tiny_lms["llama"], "--target", "x86", "-o", out), out, codes=(2,))
    assert "edgeopt export" in line and "language model" in line
    line = assert_clean_failure(cli("package", llama_onnx, "--target", "gpu-server", "-o", out), out, codes=(2,))
    assert "CPU targets" in line and "rpi5" in line and "x86" in line
