"""`edgeopt quantize --weights int4|int8` of a language model (an `edgeopt export` ONNX Runtime GenAI
folder): block-wise weight-only quantization with ONNX Runtime's MatMulNBits quantizer. Activations stay
float; each block of ``block_size`` weights along the input dimension gets its own scale.

Algorithms (``--algorithm``):
- ``rtn``: round to nearest, per block (ONNX Runtime's default weight-only quantizer; int4 or int8);
- ``hqq``: Half-Quadratic Quantization, which optimises each block's zero point and scale (int4; no data);
- ``gptq``: GPTQ, which quantizes column by column and corrects the rest of each row with the inverse
  Hessian of real activations: it needs calibration text (``--calib``; int4).

Embeddings (int4 only, ``--embeddings/--no-embeddings``) become GatherBlockQuantized; the output head
is quantized unless ``--no-lm-head``. A LoRA kept unmerged (``export --adapter``) is quantized apart
from the base (``--adapter-weights``, default int8, RTN per block; a factor with fewer input rows than
the block, LoRA's B, gets the smallest power-of-two block from 16 that holds them): its small update
would otherwise be a fraction of the base's int4 step. ``--accuracy-level`` is MatMulNBits' compute type on CPU (4: int8
activations, the fastest; 1: float32, the closest).

Every quantization is measured against its float parent on held-out text (``--eval-data``, else
built-in sentences): perplexity of both, the child's top-1 next-token agreement with the parent at every
position, and how many prompts keep the parent's first ``GREEDY_TOKENS`` greedy tokens. The limits
``--max-perplexity-increase`` (relative) and ``--min-agreement`` turn those into a pass/fail: outside
them nothing is written.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..artifact import Artifact, finalize, load_artifact, write_artifact
from ..errors import ConfigError, InputError, ValidationError
from ..outputs import check_output
from ..stages.registry import StageConfig, stage

GREEDY_TOKENS = 32
GREEDY_PROMPTS = 8


class WeightQuantizeConfig(StageConfig):
    kind: Literal["quantize-weights"] = "quantize-weights"
    weights: Literal["int4", "int8"] = "int4"
    algorithm: Literal["rtn", "hqq", "gptq"] = "rtn"
    block_size: int = 32
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    symmetric: bool = True
    embeddings: Optional[bool] = None  # None: int4 with rtn int4, else float (GatherBlockQuantized: int4, rtn only)
    lm_head: bool = True
    exclude_nodes: list[str] = Field(default_factory=list)
    adapter_weights: Literal["int8", "int4", "float"] = "int8"  # an unmerged LoRA's A/B MatMuls (export --adapter)
    calib: Optional[str] = None  # text for gptq
    calib_samples: int = Field(64, ge=1)
    eval_data: Optional[str] = None  # held-out text: perplexity and agreement
    eval_samples: int = Field(32, ge=1)
    max_perplexity_increase: Optional[float] = Field(None, ge=0)  # relative: 0.05 = at most 5 % higher
    min_agreement: Optional[float] = Field(None, ge=0, le=1)  # top-1 next-token agreement with the parent

    @field_validator("block_size")
    @classmethod
    def _block(cls, v: int) -> int:
        if v < 16 or v & (v - 1):
            raise ValueError(f"block size {v}: MatMulNBits takes a power of two from 16 (16, 32, 64, 128, 256)")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.algorithm == "gptq" and not self.calib:
            raise ValueError("--algorithm gptq needs calibration text: give --calib TEXTS (a .txt / .jsonl file)")
        if self.algorithm in ("gptq", "hqq") and self.weights != "int4":
            raise ValueError(f"--algorithm {self.algorithm} writes int4 weights; use --algorithm rtn for int8")
        if self.calib and self.algorithm != "gptq":
            raise ValueError(f"--calib is the calibration text of --algorithm gptq; {self.algorithm} uses none")
        if self.embeddings and self.weights != "int4":
            raise ValueError("--embeddings: ONNX Runtime quantizes embeddings (GatherBlockQuantized) to int4 only")
        return self


def read_texts(path: str, n: int) -> tuple[list[str], str]:
    """Up to ``n`` texts: the non-empty lines of a .txt file, or the text field of a .jsonl / data file."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise InputError(f"{path}: no such file")
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        texts = [ln for ln in lines if ln][:n]
        source = str(p)
    else:
        from ..data import load_dataset

        data = load_dataset(path, kind="text").take(n)
        texts, source = [str(s) for s in data.samples if str(s).strip()], data.source
    if not texts:
        raise InputError(f"{path}: no text in it")
    return texts, source


def _texts(path: Optional[str], n: int) -> tuple[list[str], str]:
    if not path:
        from ..metrics import SAMPLE_TEXTS
        from .export import PROMPTS

        return (PROMPTS + list(SAMPLE_TEXTS))[:n], "built-in sample sentences"
    return read_texts(path, n)


class _Decoder:
    """The exported decoder as a plain ONNX Runtime session, fed one whole sequence with an empty KV
    cache: GPTQ's calibration batches."""

    def __init__(self, model_file: Path, genai_config: dict):
        import onnxruntime as ort

        dec = genai_config["model"]["decoder"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        self.kv = (int(dec["num_key_value_heads"]), int(dec["head_size"]))
        self.inputs = self.sess.get_inputs()

    def feeds(self, ids: list[int]) -> dict:
        x = np.asarray([ids], dtype=np.int64)
        f = {}
        for i in self.inputs:
            if i.name == "input_ids":
                f[i.name] = x
            elif i.name == "attention_mask":
                f[i.name] = np.ones_like(x)
            elif i.name == "position_ids":
                f[i.name] = np.arange(len(ids), dtype=np.int64)[None]
            elif "past" in i.name:
                dtype = np.float16 if "float16" in i.type else np.float32
                f[i.name] = np.zeros((1, self.kv[0], 0, self.kv[1]), dtype=dtype)
            else:
                raise ConfigError(f"the exported decoder has an input edgeopt does not know how to feed: {i.name}")
        return f


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _position_logits(gen, ids: list[int]) -> np.ndarray:
    """Logits at every position of ``ids``, from the runtime that generates (its KV cache, one token a
    step: the path decoding takes, sliding-window attention included)."""
    first, state = gen.prefill(ids[:1])
    rows = [first]
    for t in ids[1:]:
        rows.append(gen.step(state, t))
    return np.stack(rows)


def _fidelity(parent: Artifact, child: Artifact, texts: list[str], source: str, context: int) -> dict:
    from .generate import GenerateConfig, load_generator

    g_ref, g_got = load_generator(parent), load_generator(child)
    tok = g_ref.tok
    nll_ref = nll_got = 0.0
    n_tok = agree = positions = 0
    for t in texts:
        ids = [int(i) for i in tok(t, truncation=True, max_length=context)["input_ids"]]
        if len(ids) < 2:
            continue
        a, b = _position_logits(g_ref, ids), _position_logits(g_got, ids)
        agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        positions += a.shape[0]
        target = np.asarray(ids[1:])
        nll_ref -= float(_log_softmax(a[:-1])[np.arange(len(target)), target].sum())
        nll_got -= float(_log_softmax(b[:-1])[np.arange(len(target)), target].sum())
        n_tok += len(target)
    if not n_tok:
        raise InputError(f"{source}: the evaluation texts tokenize to fewer than 2 tokens each; give longer texts")
    # greedy continuations of the first prompts: identical for GREEDY_TOKENS tokens?
    prompts = texts[:GREEDY_PROMPTS]
    steps = max(1, min(GREEDY_TOKENS, context - 1 - max(len(tok(t)["input_ids"]) for t in prompts)))
    same = 0
    for p in prompts:
        cfg = GenerateConfig(max_new_tokens=steps)
        same += int(g_ref.generate(p, cfg).tokens == g_got.generate(p, cfg).tokens)
    ppl_ref, ppl_got = math.exp(nll_ref / n_tok), math.exp(nll_got / n_tok)
    return {"data": source, "texts": len(texts), "tokens": n_tok, "parent_perplexity": ppl_ref, "perplexity": ppl_got,
            "perplexity_increase": ppl_got / ppl_ref - 1, "top1_agreement": agree / positions,
            "greedy_prompts": len(prompts), "greedy_tokens": steps, "greedy_identical": same / len(prompts)}


class _CalibReader:
    """GPTQ's calibration batches: each text as one sequence with an empty KV cache."""

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def __iter__(self):
        return iter(self._feeds)

    def rewind(self):
        self._it = iter(self._feeds)


def _quantizer_config(cfg: WeightQuantizeConfig, ops: tuple[str, ...], calib_feeds: Optional[list[dict]]):
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig, GPTQWeightOnlyQuantConfig,
                                                                 HQQWeightOnlyQuantConfig)

    bits = 4 if cfg.weights == "int4" else 8
    if cfg.algorithm == "hqq":
        return HQQWeightOnlyQuantConfig(block_size=cfg.block_size, bits=bits, op_types_to_quantize=ops)
    if cfg.algorithm == "gptq":
        return GPTQWeightOnlyQuantConfig(calibration_data_reader=_CalibReader(calib_feeds or []), block_size=cfg.block_size,
                                         op_types_to_quantize=ops)
    return DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric, bits=bits,
                                        accuracy_level=cfg.accuracy_level or None, op_types_to_quantize=ops)


@contextlib.contextmanager
def _quiet():
    """The quantizer logs a line per node at INFO, NumPy warns on all-zero blocks (scale 0, handled)."""
    names = ["onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer",
             "onnxruntime.quantization.neural_compressor"]
    before = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        # GPTQ prints a progress bar on stdout, which --json owns
        with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lvl in before.items():
            logging.getLogger(n).setLevel(lvl)


def _set_accuracy_level(model, level: int) -> None:
    """GPTQ and HQQ write MatMulNBits without ``accuracy_level``: set it as asked."""
    import onnx

    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and level and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def _run_quantizer(model, what: str, **kw):
    """ONNX Runtime's MatMulNBitsQuantizer on ``model`` (quietly); its failure is one line naming ``what``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        try:
            q = MatMulNBitsQuantizer(model, **kw)
            q.process()
        except Exception as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ConfigError(f"ONNX Runtime's weight quantizer cannot quantize {what} ({detail})") from e
    return q.model.model if hasattr(q.model, "model") else q.model


HIDDEN = "edgeopt_hidden_weight/"


def _hide_weights(model, names: list[str]) -> list[str]:
    """The weights of the MatMuls ``names`` moved from initializers into Constant nodes, so that no
    quantizer sees them (ONNX Runtime's GPTQ quantizes every MatMul with an initializer weight, whatever
    ``nodes_to_exclude`` says); a weight shared with a node that is not excluded stays. Undo with
    _restore_weights."""
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, set] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, set()).add(n.name)
    todo = {n.input[1] for n in model.graph.node if n.name in names and len(n.input) > 1 and n.input[1] in inits
            and users[n.input[1]] <= set(names)}
    consts = []
    for w in sorted(todo):
        consts.append(helper.make_node("Constant", [], [w], name=HIDDEN + w, value=inits[w]))
        model.graph.initializer.remove(inits[w])
    for c in reversed(consts):
        model.graph.node.insert(0, c)
    return sorted(todo)


def _restore_weights(model) -> None:
    """Undo _hide_weights: the hidden weights back into initializers."""
    nodes = [n for n in model.graph.node if n.op_type == "Constant" and n.name.startswith(HIDDEN)]
    for n in nodes:
        t = next(a.t for a in n.attribute if a.name == "value")
        t.name = n.output[0]
        model.graph.initializer.append(t)
        model.graph.node.remove(n)


def _quantize_adapter(model, names: list[str], cfg: WeightQuantizeConfig) -> dict:
    """The unmerged LoRA's MatMuls (``names``), quantized apart from the base with RTN at
    ``cfg.adapter_weights``. A factor with fewer input rows than ``--block-size`` (LoRA's B: rank rows)
    gets the smallest block that holds them (16 for ranks up to 16, ...). Edits ``model`` in place."""
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.name in names and n.op_type == "MatMul" and n.input[1] in inits]
    if len(nodes) != len(names):
        missing = sorted(set(names) - {n.name for n in nodes})
        raise ConfigError(f"the unmerged LoRA's {missing[0]} is no longer a float MatMul after the base's quantization; "
                          "nothing was written")
    params = sum(int(numpy_helper.to_array(inits[n.input[1]]).size) for n in nodes)
    blocks: dict[int, list[str]] = {}
    if cfg.adapter_weights != "float":
        for n in nodes:
            rows = int(inits[n.input[1]].dims[0])
            bs = cfg.block_size if rows >= cfg.block_size else max(16, 1 << (rows - 1).bit_length())
            blocks.setdefault(bs, []).append(n.name)
    bits = 8 if cfg.adapter_weights == "int8" else 4
    for bs, todo in sorted(blocks.items()):
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in todo]
        algo = DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=True, bits=bits, accuracy_level=cfg.accuracy_level or None,
                                            op_types_to_quantize=("MatMul",))
        done = _run_quantizer(model, f"the unmerged LoRA to {cfg.adapter_weights}", block_size=bs, is_symmetric=True,
                              accuracy_level=cfg.accuracy_level or None, nodes_to_exclude=others, algo_config=algo)
        if done is not model:
            model.CopyFrom(done)
    quantized = sum(len(v) for v in blocks.values())
    return {"matmuls": len(names), "quantized": quantized, "params": params,
            "weights": cfg.adapter_weights if quantized else "float", "block_sizes": sorted(blocks)}


@stage("quantize-weights")
def quantize_weights(model: Artifact | str | Path, out: str | Path, config: WeightQuantizeConfig) -> Artifact:
    import onnx

    cfg = config
    parent = model if isinstance(model, Artifact) else load_artifact(model)
    pm = parent.manifest
    if pm.task != "text-generation":
        raise ConfigError(f"{parent.path} is a {pm.task} model: --weights int4/int8 quantizes language models; "
                          "quantize it with --ptq dynamic or --ptq static")
    if pm.format == "hf":
        raise ConfigError(f"{parent.path} is a PyTorch checkpoint: run `edgeopt export` first, then quantize the ONNX "
                          "Runtime GenAI folder it writes")
    if pm.format != "genai":
        raise ConfigError(f"{parent.path}: --weights quantizes the ONNX Runtime GenAI folders `edgeopt export` writes "
                          f"(got format {pm.format})")
    if pm.model.quantization:
        q = pm.model.quantization
        raise ConfigError(f"{parent.path} is already quantized ({q.get('weights')} {q.get('algorithm')}); quantize the "
                          "float export it came from")
    check_output(out, parent, cfg)
    if cfg.embeddings and cfg.algorithm != "rtn":
        raise ConfigError(f"--embeddings with --algorithm {cfg.algorithm}: ONNX Runtime's {cfg.algorithm.upper()} quantizes "
                          "MatMul weights only; drop --embeddings or use --algorithm rtn")
    embeddings = (cfg.weights == "int4" and cfg.algorithm == "rtn") if cfg.embeddings is None else cfg.embeddings
    ops = ("MatMul", "Gather") if embeddings else ("MatMul",)
    src = parent.path / pm.model.file
    graph = onnx.load(str(src))
    names = {n.name for n in graph.graph.node}
    unknown = [n for n in cfg.exclude_nodes if n not in names]
    if unknown:
        heads = [n.name for n in graph.graph.node if n.op_type == "MatMul"][:3]
        raise ConfigError(f"--exclude-nodes {unknown[0]}: no node of that name in {src.name} (MatMul nodes are named "
                          f"like {', '.join(heads)})")
    lora = [n.name for n in graph.graph.node if n.op_type == "MatMul" and ("/lora_A/" in n.name or "/lora_B/" in n.name)]
    if "adapter_weights" in cfg.model_fields_set and not lora:
        raise ConfigError(f"--adapter-weights: {parent.path} has no unmerged LoRA (export the base with --adapter to keep one)")
    exclude = list(cfg.exclude_nodes) + [n for n in lora if n not in cfg.exclude_nodes]
    if not cfg.lm_head:
        exclude += [n.name for n in graph.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]
    gcfg = json.loads((parent.path / "genai_config.json").read_text())
    context = int(pm.model.context or gcfg["model"].get("context_length") or 2048)
    calib_feeds, calib_source = None, None
    if cfg.algorithm == "gptq":
        from ..models.hf import load_tokenizer

        texts, calib_source = _texts(cfg.calib, cfg.calib_samples)
        tok = load_tokenizer(parent)
        dec = _Decoder(src, gcfg)
        calib_feeds = [dec.feeds([int(i) for i in tok(t, truncation=True, max_length=context)["input_ids"]]) for t in texts]
        calib_feeds = [f for f in calib_feeds if f["input_ids"].shape[1]]
        del dec
    _hide_weights(graph, exclude)  # ONNX Runtime's GPTQ path ignores nodes_to_exclude
    qmodel = _run_quantizer(graph, f"{src} with {cfg.algorithm} {cfg.weights}", block_size=cfg.block_size,
                            is_symmetric=cfg.symmetric, accuracy_level=cfg.accuracy_level or None, nodes_to_exclude=exclude,
                            algo_config=_quantizer_config(cfg, ops, calib_feeds))
    _restore_weights(qmodel)
    left = {n.name for n in qmodel.graph.node if n.op_type == "MatMul"}
    lost = [n for n in exclude if n not in left]
    if lost:
        raise ConfigError(f"ONNX Runtime's {cfg.algorithm} quantizer quantized {lost[0]}, which was to stay out of the "
                          "base's quantization; nothing was written")
    adapter_rec = _quantize_adapter(qmodel, [n for n in lora if n not in cfg.exclude_nodes], cfg) if lora else None
    _set_accuracy_level(qmodel, cfg.accuracy_level)
    counts = {}
    for n in qmodel.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    if not counts.get("MatMulNBits"):
        raise ConfigError(f"{src}: no MatMul weight was quantized (all excluded?); nothing was written")

    with write_artifact(out, parent, cfg) as tmp:
        for f in parent.path.iterdir():  # genai_config.json, the tokenizer, the chat template
            if f.is_file() and f.name not in ("manifest.json", pm.model.file, pm.model.file + ".data"):
                shutil.copy2(f, tmp / f.name)
        onnx.save_model(qmodel, str(tmp / pm.model.file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=pm.model.file + ".data", size_threshold=1024)
        quant = {"weights": cfg.weights, "algorithm": cfg.algorithm, "block_size": cfg.block_size,
                 "accuracy_level": cfg.accuracy_level, "symmetric": cfg.symmetric if cfg.algorithm == "rtn" else None,
                 "embeddings": "int4" if counts.get("GatherBlockQuantized") else "float",
                 "lm_head": "float" if not cfg.lm_head else cfg.weights,
                 "excluded_nodes": [n for n in exclude if n not in lora or n in cfg.exclude_nodes],  # kept float
                 "matmul_nbits_nodes": counts.get("MatMulNBits", 0), "calibration": calib_source,
                 **({"adapter_weights": cfg.adapter_weights, "adapter": adapter_rec} if adapter_rec else {}),
                 "tool": "onnxruntime.quantization.matmul_nbits_quantizer"}
        model_info = {**pm.model.model_dump(), "quantization": quant, "precision": cfg.weights}
        manifest = pm.child(stage="quantize-weights", config=cfg.model_dump(), format="genai", model=model_info)
        child = Artifact(tmp, manifest)
        texts, source = _texts(cfg.eval_data, cfg.eval_samples)
        ev = _fidelity(parent, child, texts, source, context)
        size = sum(f.stat().st_size for f in (tmp / pm.model.file, tmp / (pm.model.file + ".data")) if f.is_file())
        parent_size = sum(p.stat().st_size for p in (src, src.with_name(src.name + ".data")) if p.is_file())
        manifest.metrics = {"eval": ev, "size_bytes": size, "parent_size_bytes": parent_size,
                            "size_ratio": parent_size / size if size else None}
        if cfg.max_perplexity_increase is not None and ev["perplexity_increase"] > cfg.max_perplexity_increase:
            raise ValidationError(f"{cfg.weights} {cfg.algorithm} raised perplexity by {ev['perplexity_increase']:.1%} "
                                  f"({ev['parent_perplexity']:.3g} -> {ev['perplexity']:.3g}), more than "
                                  f"--max-perplexity-increase {cfg.max_perplexity_increase:g}; nothing was written")
        if cfg.min_agreement is not None and ev["top1_agreement"] < cfg.min_agreement:
            raise ValidationError(f"{cfg.weights} {cfg.algorithm} agrees with the float model on {ev['top1_agreement']:.1%} "
                                  f"of next tokens, below --min-agreement {cfg.min_agreement:g}; nothing was written")
        manifest = finalize(tmp, manifest)
    return Artifact(Path(out).expanduser().resolve(), manifest)
