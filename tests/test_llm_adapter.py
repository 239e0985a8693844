"""`edgeopt export BASE --adapter LORA`: the LoRA kept unmerged, as a float side branch of each projection
(ONNX Runtime GenAI's builder), checked against the PEFT model; `quantize --weights int4` then rounds the
base to int4 and the adapter's factors to int8 (or int4, or keeps them float) — never into the base."""
from __future__ import annotations

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
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime_genai")


def _lora(base: Path, out: Path, seed: int = 1, **kw) -> Path:
    """A LoRA adapter with random (non-zero) B, on the attention and MLP projections unless ``kw`` says."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "task_type": "CAUSAL_LM", "init_lora_weights": False, **kw}
    peft.get_peft_model(model, peft.LoraConfig(**cfg)).save_pretrained(out)
    return out


def _peft_logits(base: Path, adapter: Path, text: str) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model = peft.PeftModel.from_pretrained(model, adapter).eval()
    ids = transformers.AutoTokenizer.from_pretrained(base)(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1].numpy()


def _nodes(folder: Path) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}


def _bits(node) -> int:
    return next(a.i for a in node.attribute if a.name == "bits")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_unmerged_lora_export_then_int4(tiny_lms, family, tmp_path):
    base = tiny_lms[family]
    adapter = _lora(base, tmp_path / "adapter")
    onnx_dir, int4 = tmp_path / "onnx", tmp_path / "int4"
    p = cli("export", base, "--adapter", adapter, "-o", onnx_dir)
    assert p.returncode == 0, p.stderr
    assert "kept unmerged (rank 4" in p.stdout and "(the PEFT model)" in p.stdout
    m = load_artifact(onnx_dir).manifest
    assert m.format == "genai" and m.model.adapter["r"] == 4 and m.model.adapter["path"] == str(adapter.resolve())
    check = m.metrics["check"]
    assert check["against"].startswith("peft model") and check["greedy_identical_all"]
    lora = [n for n in _nodes(onnx_dir).values() if "/lora_A/" in n.name or "/lora_B/" in n.name]
    assert lora and all(n.op_type == "MatMul" for n in lora)
    # the ONNX model is the PEFT model, not the base: its prefill logits follow the adapter
    from edgeopt.llm.generate import load_generator

    g = load_generator(onnx_dir)
    got = g.prefill(g.prompt_ids(PROMPT, False)[1])[0]
    want = _peft_logits(base, adapter, PROMPT)
    assert np.allclose(got, want, atol=1e-3), float(np.abs(got - want).max())

    p = cli("quantize", onnx_dir, "-o", int4, "--weights", "int4", "--block-size", "16")
    assert p.returncode == 0, p.stderr
    assert "unmerged LoRA" in p.stdout and "int8" in p.stdout
    q = load_artifact(int4).manifest
    info = q.model.quantization
    assert info["adapter_weights"] == "int8" and info["adapter"]["quantized"] == len(lora) == info["adapter"]["matmuls"]
    nodes = _nodes(int4)
    assert not any(n.op_type == "MatMul" for n in nodes.values())
    for n in nodes.values():
        if n.op_type == "MatMulNBits":
            assert _bits(n) == (8 if ("/lora_A/" in n.name or "/lora_B/" in n.name) else 4), n.name
    assert q.metrics["eval"]["top1_agreement"] > 0.5
    res = generate(int4, PROMPT, GenerateConfig(max_new_tokens=6))
    assert res.backend == "onnxruntime-genai" and 1 <= len(res.tokens) <= 6
    p = cli("inspect", int4)
    assert p.returncode == 0, p.stderr
    assert "adapter: LoRA rank 4 unmerged" in p.stdout and "), int8" in p.stdout


def test_adapter_weights_float_keeps_the_peft_factors_exactly(tiny_lms, tmp_path):
    base = tiny_lms["llama"]
    adapter = _lora(base, tmp_path / "adapter", target_modules=["q_proj", "v_proj"], lora_alpha=16)
    onnx_dir, out = tmp_path / "onnx", tmp_path / "q"
    assert cli("export", base, "--adapter", adapter, "-o", onnx_dir).returncode == 0
    p = cli("quantize", onnx_dir, "-o", out, "--weights", "int4", "--adapter-weights", "float", "--block-size", "16")
    assert p.returncode == 0, p.stderr
    assert "MatMuls kept float" in p.stdout
    assert load_artifact(out).manifest.model.quantization["adapter"]["weights"] == "float"
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    from safetensors.numpy import load_file

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    a = saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = saved["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    node = {n.name: n for n in model.graph.node}["/model/layers.0/attn/q_proj/lora_A/MatMul"]
    assert node.op_type == "MatMul" and np.array_equal(inits[node.input[1]], a.T)
    node = {n.name: n for n in model.graph.node}["/model/layers.0/attn/q_proj/lora_B/MatMul"]
    assert np.allclose(inits[node.input[1]], b.T * (16 / 4))  # scaling alpha / r folded into B
    # the base projections are int4; k_proj (not adapted) has no branch
    nodes = {n.name: n for n in model.graph.node}
    assert nodes["/model/layers.0/attn/q_proj/MatMul_Q4"].op_type == "MatMulNBits"
    assert not any("k_proj/lora" in n for n in nodes)


def test_adapter_int4_factors(tiny_lms, tmp_path):
    base = tiny_lms["qwen2"]
    adapter = _lora(base, tmp_path / "adapter", r=16, lora_alpha=16)
    onnx_dir, out = tmp_path / "onnx", tmp_path / "q"
    assert cli("export", base, "--adapter", adapter, "-o", onnx_dir).returncode == 0
    p = cli("quantize", onnx_dir, "-o", out, "--weights", "int4", "--adapter-weights", "int4", "--block-size", "32", "--json")
    assert p.returncode == 0, p.stderr
    a = load_artifact(out).manifest.model.quantization["adapter"]
    assert a["weights"] == "int4" and a["block_sizes"] == [16, 32]  # B has 16 rows (the rank): blocks of 16
    assert {_bits(n) for n in _nodes(out).values() if n.op_type == "MatMulNBits"} == {4}


def test_gptq_keeps_the_adapter_and_exclusions_out_of_the_base_pass(tiny_lms, tmp_path):
    """ONNX Runtime's GPTQ quantizes every MatMul with a weight, whatever nodes_to_exclude says: the LoRA's
    factors must still come out int8, and --no-lm-head's head float."""
    base = tiny_lms["llama"]
    adapter = _lora(base, tmp_path / "adapter")
    onnx_dir, out = tmp_path / "onnx", tmp_path / "q"
    assert cli("export", base, "--adapter", adapter, "-o", onnx_dir).returncode == 0
    calib = tmp_path / "calib.txt"
    calib.write_text("Organic green tea, 100 bags.\nStainless steel kitchen knife with a 20 cm blade.\n")
    p = cli("quantize", onnx_dir, "-o", out, "--weights", "int4", "--algorithm", "gptq", "--calib", calib,
            "--block-size", "16", "--no-lm-head")
    assert p.returncode == 0, p.stderr
    nodes = _nodes(out)
    lora = [n for n in nodes.values() if "/lora_A/" in n.name or "/lora_B/" in n.name]
    assert lora and all(n.op_type == "MatMulNBits" and _bits(n) == 8 for n in lora)
    head = [n for n in nodes.values() if "lm_head" in n.name]
    assert head and all(n.op_type == "MatMul" for n in head)
    base_nbits = [n for n in nodes.values() if n.op_type == "MatMulNBits" and n not in lora]
    assert base_nbits and {_bits(n) for n in base_nbits} == {4}
    q = load_artifact(out).manifest.model.quantization
    assert q["adapter"]["quantized"] == len(lora) and q["lm_head"] == "float"
    assert not any("/lora_" in n for n in q["excluded_nodes"])  # they were quantized, int8


def test_rank_pattern_and_an_odd_adapter_path(tiny_lms, tmp_path):
    base = tiny_lms["qwen2"]
    adapter = _lora(base, tmp_path / "my adapter=v2, final ", target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2},
                    use_rslora=True)
    out = tmp_path / "onnx"
    p = cli("export", base, "--adapter", adapter, "-o", out)
    assert p.returncode == 0, p.stderr
    assert "(ranks 2-4, q_proj, v_proj)" in p.stdout
    assert load_artifact(out).manifest.model.adapter["ranks"] == [2, 4]


def _ia3(base: Path, out: Path) -> Path:
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft.get_peft_model(model, peft.IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                                              feedforward_modules=["down_proj"])).save_pretrained(out)
    return out


def test_bad_adapters_are_refused_in_one_line(tiny_lms, lm_tokenizer, tiny_text_classifier, tmp_path):
    base = tiny_lms["llama"]
    wider = build_tiny_lm(tmp_path, "llama", lm_tokenizer, hidden_size=96, intermediate_size=160)
    cases = {
        "another base": (_lora(wider, tmp_path / "wider-lora"), "trained for another base model"),
        "ia3": (_ia3(base, tmp_path / "ia3"), "IA3 adapter cannot be kept unmerged"),
        "lm_head": (_lora(base, tmp_path / "head", target_modules=["q_proj", "lm_head"]), "adapts lm_head"),
        "dora": (_lora(base, tmp_path / "dora", target_modules=["q_proj"], use_dora=True), "DoRA"),
        "saved modules": (_lora(base, tmp_path / "save", target_modules=["q_proj"], modules_to_save=["lm_head"]),
                          "modules_to_save"),
        "bias": (_lora(base, tmp_path / "bias", target_modules=["q_proj"], lora_bias=True), "a LoRA bias"),
        "missing": (tmp_path / "nope", "no such adapter folder"),
    }
    for name, (adapter, words) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        p = cli("export", base, "--adapter", adapter, "-o", out)
        assert_clean_failure(p, codes=(2,))
        assert words in p.stderr, (name, p.stderr)
        assert not out.exists(), name
    # an adapter on a classifier: merge it instead
    p = cli("export", tiny_text_classifier, "--adapter", cases["ia3"][0], "-o", tmp_path / "cls")
    assert_clean_failure(p, codes=(2,))
    assert "edgeopt merge" in p.stderr and not (tmp_path / "cls").exists()


def test_adapter_weights_without_an_unmerged_lora(tiny_lms, tmp_path):
    onnx_dir = tmp_path / "onnx"
    assert cli("export", tiny_lms["llama"], "-o", onnx_dir).returncode == 0
    p = cli("quantize", onnx_dir, "-o", tmp_path / "q", "--weights", "int4", "--adapter-weights", "float")
    assert_clean_failure(p, codes=(2,))
    assert "no unmerged LoRA" in p.stderr and not (tmp_path / "q").exists()


def test_recipe_reruns_the_export_when_the_adapter_folder_changes(tiny_lms, tmp_path):
    import yaml

    from edgeopt.recipe import load_recipe, run_recipe

    adapter = _lora(tiny_lms["llama"], tmp_path / "adapter", target_modules=["q_proj"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "lora", "model": str(tiny_lms["llama"]), "workdir": "runs",
                                      "stages": [{"name": "onnx", "kind": "export", "adapter": "adapter"}]}))
    first = run_recipe(load_recipe(recipe))
    assert not first.stages[0].cached
    assert run_recipe(load_recipe(recipe)).stages[0].cached
    _lora(tiny_lms["llama"], adapter, seed=7, target_modules=["q_proj"])  # retrained in place
    again = run_recipe(load_recipe(recipe))
    assert not again.stages[0].cached
