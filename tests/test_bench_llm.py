"""`edgeopt bench` of language models: a tiny llama checkpoint (PyTorch `generate`, the baseline)
against its ONNX Runtime GenAI export; time to first token, decode tokens/s, RSS and size per prompt length."""
from __future__ import annotations

import json

import pytest

from _support import LM_PROMPT as PROMPT
from edgeopt.errors import ConfigError
from test_cli import assert_clean_failure, cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tiny_lms):
    return tiny_lms["llama"]


@pytest.fixture(scope="module")
def llama_genai(llama, tmp_path_factory):
    pytest.importorskip("onnxruntime_genai")
    out = tmp_path_factory.mktemp("bench-llm") / "llama-genai"
    p = cli("export", llama, "-o", out)
    assert p.returncode == 0, p.stderr
    return out


def test_ignore_eos_generates_exactly_max_new_tokens_like_min_new_tokens(llama):
    from edgeopt.llm.generate import GenerateConfig, load_generator

    gen = load_generator(llama)
    res = gen.generate(PROMPT, GenerateConfig(max_new_tokens=40, ignore_eos=True))
    assert res.stop_reason == "max_new_tokens" and len(res.tokens) == 40 and not gen.eos & set(res.tokens)
    tok = transformers.AutoTokenizer.from_pretrained(llama)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        want = gen.model.generate(ids, do_sample=False, max_new_tokens=40, min_new_tokens=40, pad_token_id=1)
    assert res.tokens == want[0, ids.shape[1]:].tolist()


def test_bench_llm_pytorch_generate_vs_genai(llama, llama_genai):
    from edgeopt.bench.llm import LLMBenchConfig, bench_llm, prompt_ids
    from edgeopt.artifact import load_artifact

    arts = [load_artifact(llama), load_artifact(llama_genai)]
    ids = prompt_ids(arts, 48, ["Organic green tea, 100 bags."])
    assert len(ids) == 48 and ids[:16] == prompt_ids(arts, 16, ["Organic green tea, 100 bags."])

    rep = bench_llm(arts, LLMBenchConfig(prompt_lengths=[16, 48], new_tokens=16, runs=2, warmup=1, threads=1))
    assert [(r.artifact, r.backend, r.prompt_tokens) for r in rep.rows] == [
        ("llama", "pytorch generate", 16), ("llama", "pytorch generate", 48),
        ("llama-genai", "onnxruntime-genai", 16), ("llama-genai", "onnxruntime-genai", 48)]
    assert rep.kind == "edgeopt bench report" and rep.task == "text-generation" and rep.threads == 1
    for r in rep.rows:
        assert r.new_tokens == 16 and r.runs == 2
        assert r.ttft_p50_ms > 0 and r.ttft_p90_ms >= r.ttft_p50_ms and r.decode_tokens_per_s > 0 and r.e2e_s > 0
        assert r.peak_rss_mb > 0 and r.size_mb > 0 and r.load_s > 0 and 0 <= r.same_tokens <= 16
    base = {r.prompt_tokens: r for r in rep.rows[:2]}
    for r in rep.rows:
        b = base[r.prompt_tokens]
        assert r.decode_speedup == pytest.approx(r.decode_tokens_per_s / b.decode_tokens_per_s)
        assert r.ttft_speedup == pytest.approx(b.ttft_p50_ms / r.ttft_p50_ms)
        assert r.size_ratio == pytest.approx(b.size_mb / r.size_mb)
    assert all(r.decode_speedup == 1 and r.size_ratio == 1 and r.same_tokens == 16 for r in rep.rows[:2])


def test_cli_bench_of_language_models_prints_rows_and_writes_json(llama, llama_genai, tmp_path):
    js = tmp_path / "r.json"
    p = cli("bench", llama, llama_genai, "--prompt-lengths", "24", "--new-tokens", "8", "--runs", "1", "--warmup", "0",
            "--threads", "1", "--json-out", js)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any("pytorch generate" in ln and "1.00x" in ln for ln in lines), p.stdout
    assert any("onnxruntime-genai" in ln and "llama-genai" in ln for ln in lines), p.stdout
    doc = json.loads(js.read_text())
    assert [(r["backend"], r["prompt_tokens"], r["new_tokens"]) for r in doc["rows"]] == [
        ("pytorch generate", 24, 8), ("onnxruntime-genai", 24, 8)]
    assert doc["config"]["runs"] == 1 and doc["rows"][1]["decode_speedup"] > 0


def test_prompt_beyond_the_context_is_refused_before_any_work(llama, llama_genai, tmp_path):
    js = tmp_path / "r.json"
    line = assert_clean_failure(cli("bench", llama, llama_genai, "--prompt-lengths", "16,120", "--new-tokens", "16",
                                    "--json-out", js), js)
    assert "120" in line and "136" in line and "128 tokens" in line


def test_language_models_and_other_models_do_not_mix(llama, tiny_text_classifier, tmp_path):
    from edgeopt.bench.core import bench
    from edgeopt.bench.llm import bench_llm

    line = assert_clean_failure(cli("bench", llama, tiny_text_classifier))
    assert "language model" in line and "separately" in line
    assert "language model" in assert_clean_failure(cli("bench", tiny_text_classifier, llama))
    line = assert_clean_failure(cli("bench", tiny_text_classifier, "--prompt-lengths", "16"), codes=(2,))
    assert "--prompt-lengths" in line
    assert "--batch-sizes" in assert_clean_failure(cli("bench", llama, "--batch-sizes", "1"), codes=(2,))
    with pytest.raises(ConfigError, match="separately"):
        bench_llm([llama, tiny_text_classifier])
    # the Python API's bench (and recipes' bench stage) hands language models to bench_llm
    from edgeopt.bench.core import BenchConfig

    rep = bench([llama], BenchConfig(prompt_lengths=[8], new_tokens=4, runs=1, warmup=0))
    assert [(r.prompt_tokens, r.new_tokens) for r in rep.rows] == [(8, 4)] and rep.rows[0].backend == "pytorch generate"
    with pytest.raises(ConfigError, match="not for language models"):
        bench([llama], BenchConfig(batch_sizes=[1]))
    with pytest.raises(ConfigError, match="for language models"):
        bench([tiny_text_classifier], BenchConfig(new_tokens=4))


def test_bad_language_model_options_for_a_device_bench_stop_before_any_docker_work(tmp_path):
    """bench --docker-host checks --prompt-lengths / --new-tokens here, before it connects or ships anything."""
    for args, want in ((["--prompt-lengths", "0"], "--prompt-lengths"), (["--new-tokens", "1"], "--new-tokens"),
                       (["--prompt-lengths", "16", "--seq-len", "32"], "--seq-len")):
        line = assert_clean_failure(cli("bench", tmp_path / "no-bundle", "--docker-host", "ssh://nobody@192.0.2.1", *args),
                                    codes=(2,))
        assert want in line and "192.0.2.1" not in line
