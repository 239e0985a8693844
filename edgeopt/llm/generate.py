"""Text generation with a KV cache: the prompt is run once (prefill), then one token at a time, each
step feeding only the new token and the cached keys and values.

Hugging Face causal-LM checkpoints run in PyTorch (float32); ONNX Runtime GenAI folders (``edgeopt
export`` of a text-generation model) in ONNX Runtime GenAI. Both go through the same loop and the same
sampling code, so the same settings give the same tokens wherever the logits agree. ``edgeopt generate``
and the Python API ``edgeopt.generate(artifact, prompt, GenerateConfig(...))`` use it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, Field

from ..artifact import Artifact, load_artifact
from ..errors import ConfigError, InputError, StageError
from .sampling import SamplingConfig, next_token


class GenerateConfig(SamplingConfig):
    chat: bool = False  # wrap the prompt in the tokenizer's chat template (a user turn)
    threads: Optional[int] = Field(None, ge=1)
    ignore_eos: bool = False  # never choose end-of-sequence (as transformers' min_new_tokens): exactly max_new_tokens


class GenerateResult(BaseModel):
    text: str  # the continuation only
    prompt: str  # what the model was given (after the chat template)
    prompt_tokens: int
    tokens: list[int]  # the generated ids (a stop string's tokens included, its text not)
    stop_reason: Literal["max_new_tokens", "eos", "stop"]
    time_to_first_token_ms: float
    decode_tokens_per_s: Optional[float]  # tokens after the first, per second of their decoding
    seconds: float
    backend: str


def _eos_ids(model, tok) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        ids.update([e] if isinstance(e, int) else (e or []))
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids


class Generator:
    """The loop: prefill the prompt, then pick a token and step, until end-of-sequence, a stop string or
    ``max_new_tokens``. Backends give ``prefill(ids) -> (logits, state)`` and ``step(state, id) -> logits``;
    the state (the KV cache) belongs to one generation, so generations may run side by side."""

    backend = "?"
    context: Optional[int] = None
    eos: set[int] = set()
    tok = None  # a transformers tokenizer (PyTorch) or an LMTokenizer (ONNX Runtime GenAI)

    def prompt_ids(self, prompt: str, chat: bool) -> tuple[str, list[int]]:
        text = prompt
        if chat:
            if not getattr(self.tok, "chat_template", None):
                raise ConfigError("--chat: this tokenizer has no chat template; give the prompt as plain text")
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
        ids = self.tok(text, add_special_tokens=not chat)["input_ids"]
        return text, [int(i) for i in ids]

    def prefill(self, ids: list[int]) -> tuple[np.ndarray, Any]:
        """The last prompt position's logits, and the state (the KV cache) the next step continues."""
        raise NotImplementedError

    def step(self, state: Any, token: int) -> np.ndarray:
        raise NotImplementedError

    def check_length(self, n_prompt: int, max_new_tokens: int) -> None:
        if not n_prompt:
            raise ConfigError("the prompt is empty; give some text with --prompt")
        if self.context and n_prompt + max_new_tokens > self.context:
            raise ConfigError(f"the prompt is {n_prompt} tokens and --max-new-tokens {max_new_tokens}: more than the "
                              f"model's context of {self.context} tokens; shorten the prompt or lower --max-new-tokens")

    def stream(self, prompt: str, cfg: GenerateConfig, ids: Optional[list[int]] = None) -> "Generation":
        """The continuation, piece by piece: iterate it for text deltas; ``.result`` once it is done.
        Stopping the iteration early (``close()``) stops the generation there. The prompt's length is
        checked here, before any work; ``ids``: the prompt already tokenized (then ``prompt`` is its text)."""
        text, ids = (prompt, list(ids)) if ids is not None else self.prompt_ids(prompt, cfg.chat)
        self.check_length(len(ids), cfg.max_new_tokens)
        return Generation(self, text, ids, cfg)

    def generate(self, prompt: str, cfg: GenerateConfig) -> GenerateResult:
        run = self.stream(prompt, cfg)
        for _ in run:
            pass
        return run.result


class Generation:
    """One generation in progress: an iterator of text deltas (UTF-8-safe; text that could begin a stop
    string is held back until it cannot), then ``result``."""

    def __init__(self, gen: Generator, text: str, ids: list[int], cfg: GenerateConfig):
        self.gen, self.text, self.ids, self.cfg = gen, text, ids, cfg
        self.result: Optional[GenerateResult] = None
        self.tokens: list[int] = []
        self._it = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    def _run(self) -> Iterator[str]:
        gen, cfg, out = self.gen, self.cfg, self.tokens
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        reason = "max_new_tokens"
        first = cut = None
        sent = 0  # characters of the continuation already yielded
        hold = max((len(s) for s in cfg.stop if s), default=1) - 1
        logits, state = gen.prefill(self.ids)
        so_far = ""
        while True:
            if cfg.ignore_eos and gen.eos:
                logits = np.asarray(logits, dtype=np.float32).copy()
                logits[[i for i in gen.eos if i < logits.size]] = -np.inf
            nxt = next_token(logits, cfg, rng)
            if first is None:
                first = time.perf_counter()
            if nxt in gen.eos:
                reason = "eos"
                break
            out.append(nxt)
            so_far = gen.tok.decode(out, skip_special_tokens=True)
            if cfg.stop:
                hits = [so_far.find(s) for s in cfg.stop if s and s in so_far]
                if hits:
                    cut, reason = min(hits), "stop"
                    break
            if len(out) >= cfg.max_new_tokens:
                break
            ready = len(so_far) - hold
            while ready > sent and so_far[ready - 1] == "\ufffd":  # a character still being spelled out in bytes
                ready -= 1
            if ready > sent:
                yield so_far[sent:ready]
                sent = ready
            logits = gen.step(state, nxt)
        end = time.perf_counter()
        cont = so_far if cut is None else so_far[:cut]
        if len(cont) > sent:
            yield cont[sent:]
        ttft = ((first or end) - t0) * 1000
        decode = (len(out) - 1) / (end - first) if first is not None and len(out) > 1 and end > first else None
        self.result = GenerateResult(text=cont, prompt=self.text, prompt_tokens=len(self.ids), tokens=list(out),
                                     stop_reason=reason, time_to_first_token_ms=ttft, decode_tokens_per_s=decode,
                                     seconds=end - t0, backend=gen.backend)


class TorchGenerator(Generator):
    """A Hugging Face causal LM and its tokenizer, loaded once (float32, eval); with ``adapter``, a LoRA
    adapter folder applied on top, unmerged (the PEFT model)."""

    backend = "pytorch"

    def __init__(self, artifact: Artifact, threads: Optional[int] = None, adapter: Optional[Path] = None):
        import torch
        import transformers

        from ..models.architectures import load_config
        from ..models.hf import _load_failure, load_tokenizer

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(int(threads))
        folder = artifact.path
        config = load_config(folder)
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
        except Exception as e:
            raise InputError(_load_failure(folder, config, e)) from e
        if adapter is not None:
            self.model = _with_adapter(self.model, adapter, folder)
        self.tok = load_tokenizer(artifact)
        self.context = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.eos = _eos_ids(self.model, self.tok)

    def _run(self, ids: list[int], state: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            res = self.model(input_ids=torch.tensor([ids]), past_key_values=state.get("past"), use_cache=True)
        state["past"] = res.past_key_values
        return res.logits[0, -1].float().numpy()

    def prefill(self, ids: list[int]) -> tuple[np.ndarray, dict]:
        state: dict = {}
        return self._run(ids, state), state

    def step(self, state: dict, token: int) -> np.ndarray:
        return self._run([token], state)


def _with_adapter(model, adapter: Path, base: Path):
    """The PEFT model of ``model`` and a LoRA folder (export_lm has checked that the adapter fits)."""
    from ..stages._torch_common import import_peft

    try:
        return import_peft().PeftModel.from_pretrained(model, adapter, is_trainable=False).eval()
    except Exception as e:
        raise ConfigError(f"{adapter}: PEFT cannot apply this adapter to {base} ({str(e).splitlines()[0][:300]})") from e


class GenaiGenerator(Generator):
    """An ONNX Runtime GenAI folder: its model and KV cache, driven one token at a time by the loop above."""

    backend = "onnxruntime-genai"

    def __init__(self, artifact: Artifact, threads: Optional[int] = None):
        import onnxruntime_genai as og

        from .tokenizer import LMTokenizer

        info = artifact.manifest.model
        try:
            config = og.Config(str(artifact.path))
            if threads:  # onnxruntime-genai 0.18 refuses cpu provider options; session options take threads
                import json

                config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}}))
            self.model = og.Model(config)
        except Exception as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise InputError(f"{artifact.path}: ONNX Runtime GenAI cannot load the model ({detail})") from e
        self.tok = LMTokenizer(artifact.path)  # tokenizers + jinja2: what device images hold, no transformers
        self.context = info.context
        self.eos = {int(i) for i in (getattr(info, "eos_token_ids", None) or [])}
        if self.tok.eos_token_id is not None:
            self.eos.add(int(self.tok.eos_token_id))
        self._og = og

    def _append(self, gen, ids: list[int]) -> np.ndarray:
        try:
            gen.append_tokens(np.asarray(ids, dtype=np.int32))
            return np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)
        except RuntimeError as e:  # a kernel's own limit (e.g. GroupQueryAttention's head sizes)
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            detail = detail.split("Status Message:", 1)[-1].strip()
            raise StageError(f"ONNX Runtime GenAI cannot run this model ({detail[:300]})") from e

    def prefill(self, ids: list[int]) -> tuple[np.ndarray, Any]:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.context or 4096)
        gen = self._og.Generator(self.model, params)  # one per generation: its own KV cache
        return self._append(gen, ids), gen

    def step(self, state: Any, token: int) -> np.ndarray:
        return self._append(state, [token])


def check_generator(art: Artifact) -> None:
    """That a generator can run ``art`` here: a text-generation model, as a Hugging Face checkpoint or an
    ONNX Runtime GenAI folder, with what runs it installed (generate, serve and bench check this first)."""
    m = art.manifest
    if m.task != "text-generation":
        raise ConfigError(f"{art.path} is a {m.task} model; generate runs text-generation (decoder-only language) models")
    if m.format not in ("hf", "genai"):
        raise ConfigError(f"{art.path} is a {m.format} artifact; language models run as Hugging Face causal-LM "
                          "checkpoints and their `edgeopt export` (ONNX Runtime GenAI folders)")
    from ..formats import handler_for

    handler_for(art).check_runtime_installed(art, llm=True)


def load_generator(artifact: Union[Artifact, str, Path], threads: Optional[int] = None) -> Generator:
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    check_generator(art)
    return (GenaiGenerator if art.manifest.format == "genai" else TorchGenerator)(art, threads)


def generate(artifact: Union[Artifact, str, Path], prompt: str, config: Optional[GenerateConfig] = None) -> GenerateResult:
    """The continuation of ``prompt`` by a text-generation artifact (greedy unless a temperature is given)."""
    cfg = config or GenerateConfig()
    return load_generator(artifact, cfg.threads).generate(prompt, cfg)
