"""Task text-generation: decoder-only Hugging Face checkpoints (tiny random-initialised configs of the
real classes), adopted as artifacts and run by `edgeopt generate` with a KV cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _support import LM_FAMILIES as FAMILIES, LM_SMALL as SMALL, LM_PROMPT as PROMPT
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError
from edgeopt.llm.generate import GenerateConfig, generate, load_generator
from edgeopt.llm.sampling import SamplingConfig, next_token
from test_cli import assert_clean_failure, cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

def _hf_greedy(folder: Path, prompt: str, n: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n, pad_token_id=1)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_generation_matches_transformers(tiny_lms, family):
    art = load_artifact(tiny_lms[family])
    m = art.manifest
    assert m.task == "text-generation" and m.format == "hf" and m.model.family == family
    assert [t.name for t in m.io.inputs] == ["input_ids", "attention_mask"]
    assert m.io.outputs[0].name == "logits" and m.io.outputs[0].shape == ["batch", "sequence", SMALL["vocab_size"]]
    res = generate(art, PROMPT, GenerateConfig(max_new_tokens=12))
    want = _hf_greedy(tiny_lms[family], PROMPT, 12)
    if res.stop_reason == "eos":  # the model chose end-of-sequence: transformers went on only because told to
        assert want[len(res.tokens)] == 0 and res.tokens == want[: len(res.tokens)]
    else:
        assert res.stop_reason == "max_new_tokens" and res.tokens == want
    tok = transformers.AutoTokenizer.from_pretrained(tiny_lms[family])
    assert res.text == tok.decode(res.tokens, skip_special_tokens=True)
    assert res.prompt_tokens == len(tok(PROMPT).input_ids) and res.backend == "pytorch"
    assert res.time_to_first_token_ms > 0 and res.seconds > 0


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_lms):
    gen = load_generator(tiny_lms["llama"])
    greedy = gen.generate(PROMPT, GenerateConfig(max_new_tokens=10))
    a = gen.generate(PROMPT, GenerateConfig(max_new_tokens=10, temperature=1.5, seed=7))
    b = gen.generate(PROMPT, GenerateConfig(max_new_tokens=10, temperature=1.5, seed=7))
    c = gen.generate(PROMPT, GenerateConfig(max_new_tokens=10, temperature=1.5, seed=8))
    assert a.tokens == b.tokens and a.tokens != c.tokens  # a random tiny model: near-flat logits
    k1 = gen.generate(PROMPT, GenerateConfig(max_new_tokens=10, temperature=1.5, top_k=1, seed=3))
    assert k1.tokens == greedy.tokens[: len(k1.tokens)]


def test_a_stop_string_ends_the_continuation(tiny_lms):
    gen = load_generator(tiny_lms["qwen2"])
    full = gen.generate(PROMPT, GenerateConfig(max_new_tokens=16))
    text = full.text
    assert len(text) > 4
    stop = text[len(text) // 2: len(text) // 2 + 2]
    res = gen.generate(PROMPT, GenerateConfig(max_new_tokens=16, stop=[stop]))
    assert res.stop_reason == "stop" and res.text == text[: text.find(stop)]
    assert stop not in res.text and len(res.tokens) <= len(full.tokens)


def test_chat_template(tiny_lms):
    gen = load_generator(tiny_lms["llama"])
    res = gen.generate("tea", GenerateConfig(max_new_tokens=3, chat=True))
    assert res.prompt == "<user>tea<assistant>"


def test_next_token_top_k_and_top_p_restrict_the_choice():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    rng = np.random.default_rng(0)
    assert next_token(logits, SamplingConfig(), rng) == 0  # greedy
    draws = {next_token(logits, SamplingConfig(temperature=1.0, top_k=2), rng) for _ in range(400)}
    assert draws == {0, 1}
    draws = [next_token(logits, SamplingConfig(temperature=1.0, top_p=0.8), rng) for _ in range(2000)]
    assert set(draws) == {0, 1, 2}  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    share = np.bincount(draws, minlength=3)[:3] / len(draws)
    np.testing.assert_allclose(share, np.array([0.5, 0.2, 0.15]) / 0.85, atol=0.04)
    hot = [next_token(logits, SamplingConfig(temperature=100.0), rng) for _ in range(2000)]
    assert np.bincount(hot, minlength=5).min() > 300  # a high temperature flattens the distribution


def test_cli_generate_text_and_json(tiny_lms):
    p = cli("generate", tiny_lms["phi3"], "--prompt", PROMPT, "--max-new-tokens", "5", "--json")
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)
    assert body["backend"] == "pytorch" and 0 < len(body["tokens"]) <= 5 and body["prompt"] == PROMPT
    p2 = cli("generate", tiny_lms["phi3"], "--prompt", PROMPT, "--max-new-tokens", "5")
    assert p2.returncode == 0 and p2.stdout == body["text"] + "\n"


def test_unsupported_family_names_the_supported_ones(tmp_path, lm_tokenizer):
    import shutil

    cfg = transformers.GPT2Config(vocab_size=SMALL["vocab_size"], n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    for f in lm_tokenizer.iterdir():
        shutil.copy(f, tmp_path / "gpt2" / f.name)
    with pytest.raises(ConfigError, match=r"'gpt2' language models are not supported; supported families: Llama"):
        load_artifact(tmp_path / "gpt2")
    line = assert_clean_failure(cli("generate", tmp_path / "gpt2", "--prompt", "x"), codes=(2,))
    assert "Qwen3" in line and "Gemma" in line and "Phi-3" in line


def test_bad_inputs_are_one_line(tiny_lms, cls_onnx, tmp_path):
    lm = tiny_lms["llama"]
    line = assert_clean_failure(cli("generate", lm, "--prompt", "tea " * 200), codes=(2,))
    assert "more than the model's context of 128 tokens" in line
    assert "--max-new-tokens" in assert_clean_failure(cli("generate", lm, "--prompt", "x", "--max-new-tokens", "0"), codes=(2,))
    assert "--top-p" in assert_clean_failure(cli("generate", lm, "--prompt", "x", "--top-p", "1.5"), codes=(2,))
    assert "generate runs text-generation" in assert_clean_failure(cli("generate", cls_onnx.path, "--prompt", "x"), codes=(2,))
    assert "empty" in assert_clean_failure(cli("generate", lm, "--prompt", ""), codes=(2,))
    # what does not run language models yet says so, before doing anything
    out = tmp_path / "x"
    assert "--target" in assert_clean_failure(cli("export", lm, "-o", out, "--target", "rpi5"), out, codes=(2,))
    assert "run `edgeopt export` first" in assert_clean_failure(cli("quantize", lm, "-o", out, "--weights", "int4"), out, codes=(2,))
    # bench measures them (tests/test_bench_llm.py): the default prompt 512 + 128 new tokens does not fit 128
    assert "context" in assert_clean_failure(cli("bench", lm, "--runs", "2"), codes=(2,))
    # serve does run them (tests/serve/test_llm_serve.py): its own limits are checked before it listens
    assert "--max-new-tokens" in assert_clean_failure(cli("serve", lm, "--max-new-tokens", "0"), codes=(2,))


# --- export: ONNX Runtime GenAI's decoder with a KV cache ---------------------------------------

@pytest.fixture(scope="session")
def exported_lms(tiny_lms, tmp_path_factory) -> dict[str, object]:
    """Every family through `edgeopt export`: the artifact, or the one error line where ONNX Runtime
    GenAI's builder cannot build it."""
    pytest.importorskip("onnxruntime_genai")
    root = tmp_path_factory.mktemp("lm-onnx")
    out = {}
    for family, folder in tiny_lms.items():
        p = cli("export", folder, "-o", root / family)
        out[family] = load_artifact(root / family) if p.returncode == 0 else p
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_checks_prefill_and_greedy_decode_against_pytorch(exported_lms, tiny_lms, family):
    art = exported_lms[family]
    assert hasattr(art, "manifest"), art.stderr
    m = art.manifest
    assert m.format == "genai" and m.task == "text-generation" and m.lineage[-1].stage == "export"
    assert m.model.family == family and m.model.context == SMALL["max_position_embeddings"]
    assert m.model.builder["precision"] == "fp32" and m.model.builder["version"]
    assert {"genai_config.json", "model.onnx"} <= set(m.files)
    c = m.metrics["check"]
    assert c["greedy_identical_all"] and c["prefill_max_abs_err"] < 1e-4 and c["tokens"] == 16 and c["prompts"] == 3
    # the graph: a KV cache in and out, prefill and decode in one graph
    import onnx

    g = onnx.load(str(art.path / "model.onnx"), load_external_data=False).graph
    names = [i.name for i in g.input]
    assert "input_ids" in names and any(n.startswith("past_key_values.") for n in names)
    assert any(o.name.startswith("present.") for o in g.output)
    # generate runs it with the same loop and sampling: greedy and seeded sampling give PyTorch's tokens
    for cfg in (GenerateConfig(max_new_tokens=10), GenerateConfig(max_new_tokens=10, temperature=0.7, top_k=20, seed=5)):
        got, want = generate(art, PROMPT, cfg), generate(tiny_lms[family], PROMPT, cfg)
        assert got.backend == "onnxruntime-genai" and got.tokens == want.tokens and got.text == want.text


def test_exported_lm_cli_and_refusals(exported_lms, tmp_path):
    art = exported_lms["llama"]
    p = cli("generate", art.path, "--prompt", PROMPT, "--max-new-tokens", "4", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backend"] == "onnxruntime-genai"
    p = cli("inspect", art.path)
    assert p.returncode == 0 and "format genai" in p.stdout and "onnxruntime-genai" in p.stdout
    assert "context" in assert_clean_failure(cli("bench", art.path, "--runs", "2"), codes=(2,))
    line = assert_clean_failure(cli("generate", art.path, "--prompt", "tea " * 200), codes=(2,))
    assert "context of 128 tokens" in line


def test_stream_yields_the_continuation_piece_by_piece_and_stops_when_closed(tiny_lms):
    gen = load_generator(tiny_lms["llama"])
    whole = gen.generate(PROMPT, GenerateConfig(max_new_tokens=16))
    run = gen.stream(PROMPT, GenerateConfig(max_new_tokens=16))
    pieces = list(run)
    assert len(pieces) > 1 and "".join(pieces) == whole.text == run.result.text
    assert run.result.tokens == whole.tokens
    run = gen.stream(PROMPT, GenerateConfig(max_new_tokens=16))
    next(run)
    run.close()  # the client went away: no more steps
    assert run.result is None and len(run.tokens) < len(whole.tokens)
    # stop strings: nothing past the stop string is ever yielded
    stop = whole.text[len(whole.text) // 2: len(whole.text) // 2 + 2]
    run = gen.stream(PROMPT, GenerateConfig(max_new_tokens=16, stop=[stop]))
    assert "".join(run) == whole.text[: whole.text.find(stop)] and run.result.stop_reason == "stop"
    with pytest.raises(ConfigError, match="context of 128 tokens"):
        gen.stream("word " * 200, GenerateConfig(max_new_tokens=16))
