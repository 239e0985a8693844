"""PyTorch -> ONNX, graph-optimized, then checked against PyTorch on real inputs."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable, Literal, Optional

from pydantic import Field

from ..artifact import Artifact, IOSpec, TensorSpec, TextPreprocessing, finalize, load_artifact, write_artifact
from ..errors import ConfigError, StageError, ValidationError
from ..formats.onnx import EXTERNAL_DATA_BYTES, save_onnx
from ..outputs import check_output
from .registry import StageConfig, stage

log = logging.getLogger("edgeopt.export")

PRECISION = {"float32": "fp32", "float16": "fp16"}


class ExportConfig(StageConfig):
    kind: Literal["export"] = "export"
    opset: int = Field(17, ge=13, le=23)
    batch_axis: bool = True
    atol: float = Field(1e-4, gt=0)
    rtol: float = Field(1e-3, ge=0)
    optimize: bool = True  # ONNX Runtime transformer fusions / basic graph optimizations
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    check_data: Optional[str] = None  # dataset for the numeric check; built-in samples if unset
    check_samples: int = Field(16, ge=1)
    task: Optional[str] = None  # override the task of a Hugging Face folder (e.g. feature-extraction)
    # Weights and arithmetic of the graph; its inputs and outputs stay float32. The model always
    # loads in float32 first (a bfloat16 checkpoint included). No bfloat16 graph: ONNX Runtime's
    # CPU provider has no bfloat16 kernels for most ops (Add, Mul, MatMul, Gemm, Softmax, Erf).
    dtype: Literal["float32", "float16"] = "float32"
    # A deployment target: its profile sets the opset, whether ONNX Runtime's fusions (com.microsoft
    # ops) are used, and the dtype, unless given here; the graph is checked to run on its runtime.
    target: Optional[str] = None
    # Language models: a LoRA adapter folder kept unmerged, as a float side branch (edgeopt/llm/export.py)
    adapter: Optional[str] = None


def apply_target(cfg: ExportConfig) -> ExportConfig:
    """The config with the target profile's export defaults for every field not set explicitly."""
    if cfg.target is None:
        return cfg
    from ..targets import get_target

    spec = get_target(cfg.target)
    update = {k: getattr(spec.export, k) for k in ("opset", "dtype") if k not in cfg.model_fields_set}
    opset = update.get("opset", cfg.opset)
    if spec.export.max_opset is not None and opset > spec.export.max_opset:
        raise ConfigError(f"--opset {opset}: target '{spec.name}' parses opsets up to {spec.export.max_opset}; "
                          f"give --opset {spec.export.max_opset} or less")
    return cfg.model_copy(update={**update, "target": spec.name})


@stage("export")
def export(model: Artifact | str | Path, out: str | Path, config: Optional[ExportConfig] = None) -> Artifact:

    from ..models import load_torch_model

    cfg = apply_target(config or ExportConfig())
    parent = model if isinstance(model, Artifact) else load_artifact(model)
    check_output(out, parent, cfg)
    if cfg.task is not None and cfg.task != parent.manifest.task:
        if parent.manifest.format != "hf":
            raise ConfigError(f"--task applies to Hugging Face checkpoints; {parent.path} is {parent.manifest.format}")
        from ..models.hf import adopt_hf_folder

        parent = adopt_hf_folder(parent.path, task=cfg.task)
    pm = parent.manifest
    if cfg.adapter and not (pm.task == "text-generation" and pm.format == "hf"):
        if pm.task == "text-generation":
            raise ConfigError(f"--adapter: {parent.path} is already exported ({pm.format}); give the Hugging Face base "
                              "checkpoint it came from, with --adapter")
        raise ConfigError(f"--adapter keeps a LoRA unmerged in a language model's export; {parent.path} is a "
                          f"{pm.task} {pm.format} model: merge the adapter with `edgeopt merge`, then export")
    if pm.task == "text-generation" and pm.format == "hf":  # ONNX Runtime GenAI's decoder with a KV cache
        if cfg.target is not None or cfg.dtype != "float32":
            raise ConfigError("--target and --dtype do not apply to language models yet: export them without")
        from ..llm.export import export_lm

        return export_lm(parent, out, cfg)
    if pm.format not in ("hf", "torch"):
        raise ConfigError(f"{parent.path}: is already format '{pm.format}'; export takes an hf or torch artifact")
    return export_module(parent, load_torch_model(parent, for_export=True), out, cfg)


def export_module(parent: Artifact, module, out: str | Path, cfg: ExportConfig, *, stage: str = "export",
                  stage_config: Optional[dict] = None, model_info: Optional[dict] = None,
                  metrics: Optional[dict] = None, basic_only: bool = False,
                  fidelity: Optional[tuple[float, float]] = None,
                  after: Optional[Callable[[Artifact], None]] = None) -> Artifact:
    """Export ``module`` (the parent's network, possibly changed, e.g. with fake-quant for QAT)
    and check ONNX Runtime against it.

    ``fidelity=(min_top1_agreement, min_cosine)`` replaces the element-wise tolerance: ONNX Runtime's
    int8 kernels round and saturate differently from fake quantization, so an int8 graph is held
    to agreement with its PyTorch twin rather than to float-level equality.
    ``after`` runs on the complete artifact before its manifest is finalized and it is moved into
    place (e.g. QAT's accuracy check): it may add to the manifest's metrics, or raise to discard it.
    """
    import torch

    from ..data import load_dataset
    from ..metrics import numeric_agreement, predict, sample_dataset
    from ..models import source_dtype
    from ..models.preprocess import Preprocessor
    from ..runtime.onnxruntime import OrtRuntime
    from ..runtime.torch import TorchRuntime

    pm = parent.manifest
    pre = Preprocessor(parent)
    kind = pre.kind
    data = load_dataset(cfg.check_data, kind=kind).take(cfg.check_samples) if cfg.check_data else sample_dataset(parent, cfg.check_samples)

    io = _onnx_io(pm.io, cfg.batch_axis)
    in_names = [t.name for t in io.inputs]
    out_names = [t.name for t in io.outputs]
    example = pre(data.samples[:2] if cfg.batch_axis else data.samples[:1])
    args = tuple(torch.from_numpy(example[n]) for n in in_names)

    with write_artifact(out, parent, cfg) as tmp:
        raw = tmp / "raw.onnx"
        _torch_export(_in_dtype(module, cfg.dtype), args, raw, io, cfg)
        onnx_file = tmp / "model.onnx"
        if basic_only or (cfg.optimize and not _fusions_allowed(cfg)):
            # QDQ graphs: constant folding turns Q(weight) into int8 initializers; no fusions.
            # TensorRT targets: standard ONNX ops only, so no com.microsoft fused ops.
            optimization = _basic(raw, onnx_file)
        else:
            optimization = _optimize(raw, onnx_file, parent, cfg) if cfg.optimize else _copy_model(raw, onnx_file)
        if isinstance(pm.io.preprocessing, TextPreprocessing):
            from ..models.tokenizer import save_tokenizer, tokenizer_folder

            save_tokenizer(tokenizer_folder(parent), tmp / "tokenizer")  # tokenizer.json: serve needs no transformers
            io.preprocessing = TextPreprocessing(tokenizer="tokenizer", max_length=pm.io.preprocessing.max_length,
                                                 padding=pm.io.preprocessing.padding)

        # Numeric check: PyTorch vs ONNX Runtime on the same real inputs, batch 1 and batched.
        torch_rt = TorchRuntime(parent, module=module)
        batch = 4 if cfg.batch_axis else 1
        ref = predict(torch_rt, pre, data.samples, batch_size=batch)
        got = predict(OrtRuntime(onnx_file, output_names=out_names), pre, data.samples, batch_size=batch)
        record, failures = numeric_agreement(out_names, ref, got, cfg.atol, cfg.rtol)
        if fidelity is not None:
            failures = _fidelity_failures(pm.task, out_names, ref, got, fidelity, record)
        if failures and optimization.get("level") == "transformer-fusion":
            # A fusion that changes numerics is a fusion we do not keep: fall back to the plain graph.
            log.warning("fused graph failed the numeric check (%s); keeping the unfused graph", "; ".join(failures))
            optimization = {**_basic(raw, onnx_file), "fusion_rejected": failures}
            got = predict(OrtRuntime(onnx_file, output_names=out_names), pre, data.samples, batch_size=batch)
            record, failures = numeric_agreement(out_names, ref, got, cfg.atol, cfg.rtol)
        for f in tmp.glob("raw.onnx*"):
            f.unlink()
        if cfg.target is not None:
            _check_target_ops(onnx_file, cfg.target)
        if failures:
            hint = "; float16 keeps about 3 significant digits: loosen --atol / --rtol if that is close enough" if cfg.dtype == "float16" else ""
            raise ValidationError(f"ONNX output disagrees with PyTorch on {len(data)} samples from {data.source}{hint}", failures)

        manifest = pm.child(stage=stage, config=stage_config if stage_config is not None else cfg.model_dump(),
                            format="onnx", io=io,
                            model={"file": "model.onnx", "precision": PRECISION[cfg.dtype], "dtype": cfg.dtype,
                                   "source_dtype": source_dtype(parent), "opset": cfg.opset, "exporter": cfg.exporter,
                                   "optimization": optimization, "external_data": (tmp / "model.onnx.data").exists(),
                                   **({"target": cfg.target} if cfg.target else {}),
                                   **(model_info or {})})
        manifest.metrics = {**(metrics or {}),
            "numeric_check": {"samples": len(data), "data": data.source, "outputs": record,
                              **({"mode": "fidelity", "min_top1_agreement": fidelity[0], "min_cosine": fidelity[1]}
                                 if fidelity else {"mode": "allclose", "atol": cfg.atol, "rtol": cfg.rtol})},
            "size_bytes": _size(tmp),
            "parent_size_bytes": _param_bytes(module),
            "params": int(sum(p.numel() for p in module.parameters())),
        }
        if after is not None:  # e.g. QAT's accuracy check: adds metrics, or raises to discard the artifact
            after(Artifact(tmp, manifest))
        manifest = finalize(tmp, manifest)  # once: a finished artifact is never edited
    return load_artifact(Path(out).expanduser().resolve(), verify=False)


def _fusions_allowed(cfg: ExportConfig) -> bool:
    if cfg.target is None:
        return True
    from ..targets import get_target

    return get_target(cfg.target).export.fusions == "onnxruntime"


def _check_target_ops(onnx_file: Path, target: str) -> None:
    from ..targets import get_target, unsupported_ops

    spec = get_target(target)
    if spec.export.fusions == "none":
        _drop_unused_domains(onnx_file)
    problems = unsupported_ops(spec, onnx_file)
    if problems:
        raise ValidationError(f"the exported graph cannot run on target '{target}'", problems)


def _drop_unused_domains(onnx_file: Path) -> None:
    """ONNX Runtime's optimizer declares its contrib domains (com.microsoft, ...) even where no node
    uses them; a graph for a runtime without them should not name them."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    used = {n.domain for n in model.graph.node} | {n.domain for f in model.functions for n in f.node}
    used |= {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    if len(keep) == len(model.opset_import):
        return
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if (onnx_file.parent / (onnx_file.name + ".data")).exists():
        model = onnx.load(str(onnx_file))  # with its weights, then saved the same way
        del model.opset_import[:]
        model.opset_import.extend(keep)
    save_onnx(model, onnx_file)


def _fidelity_failures(task: str, names, ref, got, limits: tuple[float, float], record: dict) -> list[str]:
    from ..metrics import quality

    min_top1, min_cos = limits
    failures = []
    for name, r, g in zip(names, ref, got):
        q = quality(task, g, None, r)
        record[name].update(q, within_tolerance=None)
        if q.get("top1_agreement", 1.0) < min_top1 or q["cosine_mean"] < min_cos:
            failures.append(f"{name}: top-1 agreement {q.get('top1_agreement', float('nan')):.3f} (min {min_top1}), "
                            f"mean cosine {q['cosine_mean']:.4f} (min {min_cos})")
    return failures


def _onnx_io(io: IOSpec, batch_axis: bool) -> IOSpec:
    def fix(t: TensorSpec) -> TensorSpec:
        shape = [(1 if (d == "batch" and not batch_axis) else d) for d in t.shape]
        return TensorSpec(name=t.name, dtype=t.dtype, shape=shape)

    return IOSpec(inputs=[fix(t) for t in io.inputs], outputs=[fix(t) for t in io.outputs], preprocessing=io.preprocessing)


def _torch_export(module, args, path: Path, io: IOSpec, cfg: ExportConfig) -> None:
    import torch

    in_names = [t.name for t in io.inputs]
    out_names = [t.name for t in io.outputs]
    axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in [*io.inputs, *io.outputs]}
    axes = {k: v for k, v in axes.items() if v}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            if cfg.exporter == "dynamo":
                dims: dict[str, torch.export.Dim] = {}
                shapes = {}
                for t in io.inputs:
                    shapes[t.name] = {i: dims.setdefault(d, torch.export.Dim(d)) for i, d in enumerate(t.shape) if isinstance(d, str)} or None
                per_input = tuple(shapes[n] for n in in_names)
                # torch.export matches dynamic_shapes to forward's parameters: a `*inputs` forward
                # (our HF wrappers) is one parameter holding all inputs.
                import inspect

                params = list(inspect.signature(module.forward).parameters.values())
                if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
                    per_input = (per_input,)
                torch.onnx.export(module, args, str(path), input_names=in_names, output_names=out_names,
                                  dynamic_shapes=per_input, opset_version=cfg.opset,
                                  dynamo=True, external_data=_param_bytes(module) > EXTERNAL_DATA_BYTES, verbose=False)
            else:
                torch.onnx.export(module, args, str(path), input_names=in_names, output_names=out_names,
                                  dynamic_axes=axes, opset_version=cfg.opset, dynamo=False, do_constant_folding=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        alt = "dynamo" if cfg.exporter == "torchscript" else "torchscript"
        raise StageError(f"torch.onnx.export failed ({msg[:300]}); try --exporter {alt} or another --opset") from e


def _in_dtype(module, dtype: str):
    """``module`` computing in ``dtype`` behind float32 inputs and outputs, so the graph keeps the
    IO spec that preprocessing, bench and serve feed. A copy: ``module`` stays the float32 reference."""
    if dtype == "float32":
        return module
    import copy

    import torch

    class CastIO(torch.nn.Module):
        def __init__(self, inner, dt):
            super().__init__()
            self.inner, self.dt = copy.deepcopy(inner).to(dt), dt

        def forward(self, *inputs):
            out = self.inner(*[x.to(self.dt) if x.is_floating_point() else x for x in inputs])
            return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    return CastIO(module, getattr(torch, dtype)).eval()


def _param_bytes(module) -> int:
    return int(sum(p.numel() * p.element_size() for p in module.parameters()))


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*.onnx*") if f.is_file())


def _copy_model(src: Path, dst: Path) -> dict:
    import onnx

    save_onnx(onnx.load(str(src)), dst)
    return {"level": "none"}


def _optimize(src: Path, dst: Path, parent: Artifact, cfg: ExportConfig) -> dict:
    """Transformer fusions (Attention, SkipLayerNorm, BiasGelu...) where the architecture has them,
    else ONNX Runtime's basic, hardware-independent graph rewrites. A fusion is an optimization,
    never a reason to fail the export: if it raises, the basic graph is kept and the reason recorded."""
    fusion = _fusion_params(parent)
    if fusion is None:
        return _basic(src, dst)
    model_type, heads, hidden = fusion
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        opt = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0)
    except Exception as e:
        reason = _describe(e)
        log.warning("ONNX Runtime's %s fusion failed (%s); keeping the unfused graph", model_type, reason)
        return {**_basic(src, dst), "fusion_error": reason}
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    save_onnx(opt.model, dst)
    return {"level": "transformer-fusion", "model_type": model_type, "fused_ops": fused}


def _fusion_params(parent: Artifact) -> Optional[tuple[str, int, int]]:
    """(optimizer model_type, heads, hidden size) for ONNX Runtime's fusions, or None where none apply."""
    if parent.manifest.format != "hf":
        return None
    from ..models.architectures import load_config, ort_fusion_type

    config = load_config(parent.path)
    model_type = ort_fusion_type(config)
    if model_type is None:
        return None
    heads, hidden = config.num_attention_heads, config.hidden_size
    pruned_heads = getattr(parent.manifest.model, "attention_heads", None)
    if pruned_heads and int(pruned_heads) != heads:
        # ONNX Runtime's Attention fusion assumes Q/K/V as wide as the hidden size; head-pruned
        # layers are narrower, so they run unfused (still correct; FFN fusions below need it too).
        return None
    if not (isinstance(heads, int) and isinstance(hidden, int)):
        return model_type, 0, 0  # per-stage sizes (Swin's list of head counts): the optimizer reads them off the graph
    return model_type, heads, hidden


def _describe(e: Exception) -> str:
    """One line for an exception, with where it was raised when it carries no message (a bare assert)."""
    import traceback

    text = str(e).strip()
    if text:
        return f"{type(e).__name__}: {text.splitlines()[0][:300]}"
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno}"


def _basic(src: Path, dst: Path) -> dict:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3  # errors only: "cannot constant fold" notes on float16 nodes are not the user's concern
    so.optimized_model_filepath = str(dst.with_suffix(".basic.onnx"))
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        from ..runtime.onnxruntime import load_error

        raise load_error(src, e) from e
    model = onnx.load(so.optimized_model_filepath)
    Path(so.optimized_model_filepath).unlink()
    save_onnx(model, dst)
    return {"level": "basic"}
