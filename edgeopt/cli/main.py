"""The edgeopt CLI: each command parses options, calls one library function, renders the result.

This module is the error boundary: EdgeoptError becomes one line on stderr and exit
code 2 (usage) or 1 (failure); --debug shows the traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError as PydanticValidationError
from rich.console import Console
from rich.markup import escape

from .._version import __version__
from ..errors import ConfigError, EdgeoptError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Take a trained PyTorch / Hugging Face model to a fast, verified model on a device.")


def _console(stderr: bool = False) -> Console:
    """On a terminal, rich wraps to its width; elsewhere (CI logs, pipes, files) lines are never
    wrapped or cut, so scripts and tests see whole paths whatever the terminal or path length."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else 100_000, soft_wrap=not tty)


console = _console()
err_console = _console(stderr=True)
_state = {"debug": False}


def _choices(name: str, values) -> type[Enum]:
    """A typed choice for an option: --help lists the values and shell completion offers them."""
    return Enum(name, {v: v for v in values}, type=str)


def _target_choices() -> type[Enum]:
    from ..targets import target_names  # reads the targets/ folder listing only, no YAML

    return _choices("Target", ["host", *target_names(aliases=True)])


Ptq = _choices("Ptq", ["dynamic", "static"])
Weights = _choices("Weights", ["int4", "int8"])
WeightAlgo = _choices("WeightAlgo", ["rtn", "hqq", "gptq"])
AdapterWeights = _choices("AdapterWeights", ["int8", "int4", "float"])
Method = _choices("Method", ["minmax", "entropy", "percentile"])
Exporter = _choices("Exporter", ["torchscript", "dynamo"])
Structured = _choices("Structured", ["heads", "neurons", "channels"])
Importance = _choices("Importance", ["magnitude", "taylor"])
Dtype = _choices("Dtype", ["float32", "float16"])
Task = _choices("Task", ["text-classification", "feature-extraction", "image-classification"])
Target = _target_choices()


def _v(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else choice.value


def _p(path: Any) -> str:
    """A path for rich output: '[' in a folder name is text, not markup."""
    return escape(str(path))


def _emit(obj: Any) -> None:
    """--json: one JSON object on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _status_printer(as_json: bool):
    """Status lines of long commands on stderr; none with --json or EDGEOPT_QUIET."""
    if as_json or os.environ.get("EDGEOPT_QUIET"):
        return lambda s: None
    return lambda s: err_console.print(escape(s), highlight=False)


def artifact_summary(art) -> dict:
    """What --json prints for a command that wrote an artifact."""
    m = art.manifest
    last = m.lineage[-1] if m.lineage else None
    return {"artifact": str(art.path), "format": m.format, "task": m.task, "precision": m.model.precision,
            "labels": m.labels, "stage": last.stage if last else None,
            "parent_hash": last.parent_hash if last else None, "manifest_hash": m.digest(),
            "io": m.io.model_dump(mode="json"), "model": m.model.model_dump(mode="json"), "metrics": m.metrics, "files": len(m.files)}


# Shared option declarations (declared once, used by several commands).
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="New folder for the artifact (written atomically); an existing "
                                      "path is replaced only if it is an edgeopt artifact.")]
TargetOpt = Annotated[Optional[Target], typer.Option("--target", "-t", help="Deployment target (default: this host).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (the artifact, its manifest summary and metrics) to stdout.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="Dataset: .jsonl, .npz or sklearn:digits[:split].")]
ValDataOpt = Annotated[Optional[str], typer.Option("--val-data", help="Labelled validation data: the best epoch is kept.")]
EvalDataOpt = Annotated[Optional[str], typer.Option("--eval-data", help="Labelled test data: accuracy before/after is recorded.")]


def make_config(cls, options: Optional[dict[str, str]] = None, **kwargs: Any):
    """Build a typed config; pydantic errors become one ConfigError naming the option (``options``:
    field -> option, where a field's option is spelled otherwise, e.g. timeout_s -> --timeout)."""
    try:
        return cls(**{k: v for k, v in kwargs.items() if v is not None})
    except PydanticValidationError as e:
        parts = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            field = "-".join(str(x) for x in err["loc"])
            option = (options or {}).get(field) or f"--{field.replace('_', '-')}"
            parts.append(f"{option}: {msg}" if err["loc"] else msg)
        raise ConfigError("; ".join(parts)) from e


def _model_path(ref: str) -> Path:
    from ..recipe import resolve_model_ref

    return resolve_model_ref(ref)


def _version(value: bool) -> None:
    if value:
        console.print(f"edgeopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    _state["debug"] = debug


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="HF checkpoint folder, artifact directory or pkg:PACKAGE/SUBDIR.")],
    output: OutOpt,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the target's, else 17).")] = None,
    batch_axis: Annotated[bool, typer.Option("--batch-axis/--no-batch-axis", help="Dynamic batch axis (else batch 1).")] = True,
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the numeric check against PyTorch.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the numeric check.")] = 1e-3,
    exporter: Annotated[Exporter, typer.Option(help="torchscript (fuses best with ONNX Runtime) or dynamo.")] = Exporter.torchscript,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="ONNX Runtime graph optimizations / transformer fusions.")] = True,
    task: Annotated[Optional[Task], typer.Option(help="Override the checkpoint's task.")] = None,
    dtype: Annotated[Optional[Dtype], typer.Option(
        help="Weights of the ONNX graph; every checkpoint (bfloat16 too) loads as float32 first. float16 halves the "
             "file, for GPU targets: ONNX Runtime's CPU provider runs it no faster, and it needs a looser --atol. "
             "No bfloat16: ONNX Runtime's CPU provider has no bfloat16 kernels. Default: the target's, else float32.")] = None,
    data: DataOpt = None,
    target: Annotated[Optional[Target], typer.Option("--target", "-t", help="Export for this target: its opset, dtype and "
                      "the fusions its runtime has (TensorRT targets: standard ONNX ops only); the graph is checked to run there.")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="Language models: a LoRA adapter folder (PEFT) kept unmerged, as a "
                       "float side branch of each projection, checked against the PEFT model; `quantize --weights int4` "
                       "then keeps it int8 instead of rounding it into the base's int4 weights.")] = None,
    as_json: JsonOpt = False,
):
    """Export a PyTorch / HF model to ONNX, optimize it and check it against PyTorch."""
    from ..stages.export import ExportConfig
    from ..stages.export import export as run

    cfg = make_config(ExportConfig, opset=opset, batch_axis=batch_axis, atol=atol, rtol=rtol, exporter=_v(exporter),
                      optimize=optimize, check_data=data, task=_v(task), dtype=_v(dtype), target=_v(target), adapter=adapter)
    art = run(_model_path(model), output, cfg)
    if as_json:
        return _emit(artifact_summary(art))
    m = art.manifest
    if m.format == "genai":  # a language model: ONNX Runtime GenAI's decoder, checked step by step
        c = m.metrics["check"]
        console.print(f"[green]exported[/green] {_p(art.path)} (ONNX Runtime GenAI {m.model.builder.get('version')}, "
                      f"{m.model.family}, KV cache, context {m.model.context})")
        ad = m.model.adapter
        if ad:
            from ..formats.genai import lora_ranks

            console.print(f"  LoRA adapter {_p(ad['path'])} kept unmerged ({lora_ranks(ad)}, {', '.join(ad['modules'])})")
        console.print(f"  prefill logits: max abs err {c['prefill_max_abs_err']:.2e}; greedy tokens identical to PyTorch "
                      f"{'(the PEFT model) ' if ad else ''}for {c['tokens']} steps on {c['prompts']} prompts")
        return None
    checks = m.metrics["numeric_check"]["outputs"]
    console.print(f"[green]exported[/green] {_p(art.path)} ({m.metrics['size_bytes'] / 1e6:.1f} MB, "
                  f"optimization: {m.model.optimization['level']}"
                  + (f", opset {m.model.opset} for target {m.model.target}" if getattr(m.model, "target", None) else "") + ")")
    for name, rec in checks.items():
        console.print(f"  {name}: max abs err {rec['max_abs_err']:.2e}, max rel err {rec['max_rel_err']:.2e} "
                      f"over {m.metrics['numeric_check']['samples']} samples")


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="An fp32 ONNX artifact (PTQ), or a PyTorch hf/torch artifact (--qat, or torch-side --ptq static).")],
    output: OutOpt,
    ptq: Annotated[Optional[Ptq], typer.Option(help="dynamic (weights int8, activations at run time) or static (QDQ, calibrated).")] = None,
    qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware training in PyTorch, exported as a TensorRT-style QDQ ONNX.")] = False,
    calib: Annotated[Optional[str], typer.Option(help="Calibration data for --ptq static.")] = None,
    calib_samples: Annotated[Optional[int], typer.Option(help="Calibration samples to use.")] = None,
    method: Annotated[Method, typer.Option(help="Calibration method.")] = Method.minmax,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Per-channel weight scales.")] = True,
    target: TargetOpt = None,
    eval_data: EvalDataOpt = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Fail if accuracy drops more than this many points.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Labelled training data for --qat.")] = None,
    val_data: ValDataOpt = None,
    epochs: Annotated[int, typer.Option(help="QAT epochs.")] = 1,
    lr: Annotated[float, typer.Option(help="QAT learning rate.")] = 2e-5,
    exclude_nodes: Annotated[Optional[list[str]], typer.Option(help="Keep this node in float (its name in the graph; "
                                                               "repeat the option or separate names by commas).")] = None,
    exclude_op_types: Annotated[Optional[list[str]], typer.Option(help="Keep every node of this op type in float, e.g. "
                                                                  "Attention (repeatable or comma-separated).")] = None,
    weights: Annotated[Optional[Weights], typer.Option(help="Language models: weight-only int4 or int8 (MatMulNBits) of an "
                                                       "`edgeopt export` folder.")] = None,
    algorithm: Annotated[Optional[WeightAlgo], typer.Option(help="With --weights: rtn (default), hqq, or gptq (needs --calib text).")] = None,
    block_size: Annotated[Optional[int], typer.Option(help="With --weights: weights per scale block (16, 32, 64, 128...; default 32).")] = None,
    accuracy_level: Annotated[Optional[int], typer.Option(help="With --weights: MatMulNBits compute on CPU, 4 = int8 "
                                                          "(fastest, default), 1 = float32.")] = None,
    embeddings: Annotated[Optional[bool], typer.Option("--embeddings/--no-embeddings", help="With --weights int4: quantize "
                                                       "the token embeddings too (default: yes).")] = None,
    lm_head: Annotated[bool, typer.Option("--lm-head/--no-lm-head", help="With --weights: quantize the output head (default: yes).")] = True,
    adapter_weights: Annotated[Optional[AdapterWeights], typer.Option(help="With --weights, of an export with an unmerged LoRA "
                               "(export --adapter): its factors' weights, quantized apart from the base (default int8).")] = None,
    max_perplexity_increase: Annotated[Optional[float], typer.Option(help="With --weights: fail if perplexity on --eval-data "
                                                                     "rises more than this fraction (0.05 = 5 %).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="With --weights: fail if the top-1 next token agrees with the "
                                                           "float model on less than this fraction of positions.")] = None,
    as_json: JsonOpt = False,
):
    """Quantize: int8 PTQ of ONNX artifacts, QAT / torch-side PTQ of PyTorch models, or weight-only int4/int8 of
    language models (--weights)."""
    from ..artifact import load_artifact

    ptq, method, target, weights, algorithm = _v(ptq), _v(method), _v(target), _v(weights), _v(algorithm)
    parent = load_artifact(_model_path(model))
    lm_opts = {"--algorithm": algorithm, "--block-size": block_size, "--accuracy-level": accuracy_level,
               "--embeddings": embeddings, "--no-lm-head": None if lm_head else False,
               "--max-perplexity-increase": max_perplexity_increase, "--min-agreement": min_agreement,
               "--adapter-weights": _v(adapter_weights)}
    if weights or parent.manifest.task == "text-generation":
        return _quantize_weights(parent, output, weights, algorithm, block_size, accuracy_level, embeddings, lm_head,
                                 max_perplexity_increase, min_agreement, calib, calib_samples, eval_data, exclude_nodes,
                                 _v(adapter_weights),
                                 others={"--ptq": ptq, "--qat": qat or None, "--target": target, "--data": data,
                                         "--max-accuracy-drop": max_accuracy_drop, "--exclude-op-types": exclude_op_types,
                                         "--per-tensor": None if per_channel else False},
                                 as_json=as_json)
    given = [k for k, v in lm_opts.items() if v is not None]
    if given:
        raise ConfigError(f"{given[0]} applies to --weights int4/int8 (language models); {parent.path} is a "
                          f"{parent.manifest.task} model")
    if qat or (parent.manifest.format in ("hf", "torch")):
        if not qat and ptq != "static":
            raise ConfigError(f"{parent.path} is a PyTorch model: use --qat --data DATA, or --ptq static --calib DATA "
                              "(torch-side PTQ); for ONNX Runtime PTQ run `edgeopt export` first")
        if exclude_nodes or exclude_op_types:
            raise ConfigError("--exclude-nodes/--exclude-op-types apply to ONNX Runtime PTQ of an ONNX artifact; "
                              "run `edgeopt export` first and quantize that")
        from ..stages.qat import QATConfig
        from ..stages.qat import qat as run_qat

        if method not in ("minmax", "percentile"):
            raise ConfigError(f"--method {method}: PyTorch-side calibration supports minmax or percentile")
        if not per_channel:
            raise ConfigError("--per-tensor: QAT and torch-side PTQ use per-channel weights (TensorRT's rule)")
        cfg = make_config(QATConfig, data=data or calib, val_data=val_data, eval_data=eval_data, train=qat, epochs=epochs,
                          lr=lr, calib_samples=calib_samples, target=target, max_accuracy_drop=max_accuracy_drop,
                          calibration="percentile" if method == "percentile" else "max")
        art = run_qat(parent, output, cfg)
    else:
        from ..stages.quantize import QuantizeConfig
        from ..stages.quantize import quantize as run

        cfg = make_config(QuantizeConfig, ptq=ptq or "dynamic", calib=calib, calib_samples=calib_samples, method=method,
                          per_channel=per_channel, target=target, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop,
                          exclude_nodes=_names(exclude_nodes, "--exclude-nodes"),
                          exclude_op_types=_names(exclude_op_types, "--exclude-op-types"))
        art = run(parent, output, cfg)
    if as_json:
        return _emit(artifact_summary(art))
    m = art.manifest
    q = m.model.quantization
    ev = m.metrics["eval"]
    console.print(f"[green]quantized[/green] {_p(art.path)}: {q['mode']} int8 for {q['target']} "
                  f"(weights {q['weight_type']}{', per-channel' if q['per_channel'] else ''}, activations {q['activation_type']}), "
                  f"{m.metrics['size_bytes'] / 1e6:.1f} MB")
    kept = [*q.get("excluded_op_types", []), *q.get("excluded_nodes", [])]
    if kept:
        console.print(f"  kept in float: {escape(', '.join(kept))}")
    parts = [f"{k} {v:.4f}" for k, v in ev.items() if k in ("parent_accuracy", "accuracy", "top1_agreement", "cosine_mean") and v is not None]
    if parts:
        console.print(f"  on {ev.get('samples', '?')} samples of {_p(ev['data'])}: " + ", ".join(parts))


def _quantize_weights(parent, output, weights, algorithm, block_size, accuracy_level, embeddings, lm_head,
                      max_perplexity_increase, min_agreement, calib, calib_samples, eval_data, exclude_nodes,
                      adapter_weights, others: dict, as_json: bool):
    from ..llm.quantize import WeightQuantizeConfig, quantize_weights

    if parent.manifest.task != "text-generation":
        raise ConfigError(f"--weights quantizes language models; {parent.path} is a {parent.manifest.task} model: "
                          "use --ptq dynamic or --ptq static")
    if not weights:
        raise ConfigError(f"{parent.path} is a language model: give --weights int4 (or int8) for weight-only quantization")
    given = [k for k, v in others.items() if v not in (None, [], ())]
    if given:
        raise ConfigError(f"{given[0]} does not apply to --weights (weight-only quantization of a language model)")
    kw = {k: v for k, v in dict(algorithm=algorithm, block_size=block_size, accuracy_level=accuracy_level,
                                embeddings=embeddings, calib_samples=calib_samples,
                                adapter_weights=adapter_weights).items() if v is not None}
    cfg = make_config(WeightQuantizeConfig, weights=weights, lm_head=lm_head, calib=calib, eval_data=eval_data,
                      max_perplexity_increase=max_perplexity_increase, min_agreement=min_agreement,
                      exclude_nodes=_names(exclude_nodes, "--exclude-nodes") if exclude_nodes else [], **kw)
    art = quantize_weights(parent, output, cfg)
    if as_json:
        return _emit(artifact_summary(art))
    m = art.manifest
    q, ev = m.model.quantization, m.metrics["eval"]
    console.print(f"[green]quantized[/green] {_p(art.path)}: {q['weights']} weights ({q['algorithm']}, block {q['block_size']}, "
                  f"accuracy level {q['accuracy_level']}; embeddings {q['embeddings']}, lm_head {q['lm_head']}), "
                  f"{m.metrics['size_bytes'] / 1e6:.1f} MB ({m.metrics['size_ratio']:.1f}x smaller)")
    if q.get("adapter"):
        a = q["adapter"]
        console.print(f"  unmerged LoRA ({a['params'] / 1e3:.0f} k parameters): "
                      + (f"its {a['matmuls']} MatMuls {a['weights']} (blocks of {', '.join(map(str, a['block_sizes']))})"
                         if a["quantized"] else f"its {a['matmuls']} MatMuls kept float"))
    console.print(f"  on {ev['tokens']} tokens of {_p(ev['data'])}: perplexity {ev['parent_perplexity']:.3f} -> "
                  f"{ev['perplexity']:.3f} ({ev['perplexity_increase']:+.1%}), top-1 agreement {ev['top1_agreement']:.1%}, "
                  f"greedy {ev['greedy_tokens']} tokens identical on {ev['greedy_identical']:.0%} of {ev['greedy_prompts']} prompts")


def _names(values: Optional[list[str]], option: str) -> list[str]:
    """Repeated options and comma-separated lists alike, in order, without duplicates; an option
    given with nothing in it is a ConfigError (it would otherwise quietly exclude nothing)."""
    out: list[str] = []
    for v in values or []:
        for name in v.split(","):
            if name.strip() and name.strip() not in out:
                out.append(name.strip())
    if values and not out:
        raise ConfigError(f"{option}: no name given; give one or more, separated by commas")
    return out


EnginePrecision = _choices("EnginePrecision", ["fp32", "fp16", "int8", "best"])
HardwareCompat = _choices("HardwareCompat", ["none", "ampere+"])
Quantizer = _choices("Quantizer", ["qdq", "modelopt"])
EngineRuntime = _choices("EngineRuntime", ["tensorrt", "onnxruntime"])


@app.command()
def engine(
    model: Annotated[str, typer.Argument(help="ONNX artifact (or an engine artifact to rebuild here from its ONNX).")],
    output: OutOpt,
    precision: Annotated[EnginePrecision, typer.Option(help="fp32, fp16, int8 (from the graph's Q/DQ nodes) or best "
                         "(int8 where quantized, fp16 elsewhere).")] = EnginePrecision.fp16,
    shapes: Annotated[Optional[list[str]], typer.Option("--shapes", help="Optimization profile of one input, "
                      "NAME:MIN:OPT:MAX with shapes like 8x128 (repeatable); default: the target's batch and sequence ranges.")] = None,
    workspace: Annotated[Optional[float], typer.Option("--workspace", help="Builder workspace limit in GB.")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="Timing cache file: read, and updated after the build.")] = None,
    version_compatible: Annotated[bool, typer.Option("--version-compatible", help="Runs on later TensorRT releases of the same major.")] = False,
    hardware_compat: Annotated[HardwareCompat, typer.Option("--hardware-compat", help="ampere+: runs on any Ampere or newer "
                               "discrete GPU (not Jetson), a little slower.")] = HardwareCompat.none,
    quantizer: Annotated[Quantizer, typer.Option(help="int8 from the graph's Q/DQ nodes (qdq), or NVIDIA ModelOpt's ONNX PTQ "
                         "on --calib data (modelopt).")] = Quantizer.qdq,
    calib: Annotated[Optional[str], typer.Option(help="Calibration data for --quantizer modelopt.")] = None,
    runtime: Annotated[EngineRuntime, typer.Option("--runtime", help="tensorrt (TensorRT's runtime) or onnxruntime "
                       "(ONNX Runtime's TensorRT EP, an EP-context model).")] = EngineRuntime.tensorrt,
    target: TargetOpt = None,
    data: DataOpt = None,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance against ONNX Runtime CPU (default per precision).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance (default per precision).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a TensorRT engine on this GPU (TensorRT 10 or 11), check its precision and outputs."""
    from ..stages.engine import EngineConfig
    from ..stages.engine import engine as run

    cfg = make_config(EngineConfig, {"workspace_gb": "--workspace", "check_data": "--data"}, precision=_v(precision),
                      shapes=shapes or [], workspace_gb=workspace, timing_cache=str(timing_cache) if timing_cache else None,
                      version_compatible=version_compatible, hardware_compat=_v(hardware_compat), quantizer=_v(quantizer),
                      calib=calib, runtime=_v(runtime), target=_v(target), check_data=data, atol=atol, rtol=rtol)
    art = run(_model_path(model), output, cfg)
    if as_json:
        return _emit(artifact_summary(art))
    m = art.manifest
    k = m.model.key
    layers = ", ".join(f"{n} {p}" for p, n in m.model.layers.items()) or "not reported by the EP"
    console.print(f"[green]built[/green] {_p(art.path)}: {m.model.precision} engine, TensorRT {k.tensorrt} on {k.gpu}, "
                  f"{m.metrics['size_bytes'] / 1e6:.1f} MB in {m.metrics['build_seconds']:.0f} s; layers: {layers}")


@app.command()
def merge(
    base: Annotated[str, typer.Argument(help="Base Hugging Face checkpoint the adapter was trained on.")],
    adapter: Annotated[str, typer.Option(help="PEFT adapter folder (adapter_config.json + weights).")],
    output: OutOpt,
    atol: Annotated[float, typer.Option(help="Max abs difference allowed between merged and PEFT outputs.")] = 1e-4,
    data: DataOpt = None,
    as_json: JsonOpt = False,
):
    """Merge a PEFT adapter (LoRA & co., with modules_to_save) into the base; checked against the PEFT model."""
    from ..stages.merge import MergeConfig
    from ..stages.merge import merge as run

    art = run(_model_path(base), output, make_config(MergeConfig, adapter=adapter, atol=atol, check_data=data))
    if as_json:
        return _emit(artifact_summary(art))
    rec = art.manifest.metrics["numeric_check"]["outputs"]
    console.print(f"[green]merged[/green] {_p(art.path)} ({art.manifest.task}); merged vs PEFT: "
                  + ", ".join(f"{k} max abs diff {v['max_abs_err']:.2e}" for k, v in rec.items()))


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="PyTorch model (hf or torch artifact).")],
    output: OutOpt,
    sparsity: Annotated[float, typer.Option(help="Fraction to remove, in [0, 1).")],
    structured: Annotated[Optional[Structured], typer.Option(help="heads | neurons (transformers) | channels (CNNs); omit for unstructured.")] = None,
    importance: Annotated[Importance, typer.Option(help="magnitude, or taylor (gradient x weight on --data).")] = Importance.magnitude,
    data: DataOpt = None,
    recover_steps: Annotated[int, typer.Option(help="Recovery fine-tune steps on --data.")] = 0,
    val_data: ValDataOpt = None,
    eval_data: EvalDataOpt = None,
    lr: Annotated[float, typer.Option(help="Recovery learning rate.")] = 5e-5,
    as_json: JsonOpt = False,
):
    """Prune weights (unstructured) or remove heads / neurons / channels (structured, smaller and faster)."""
    from ..stages.prune import PruneConfig
    from ..stages.prune import prune as run

    cfg = make_config(PruneConfig, sparsity=sparsity, structured=_v(structured), importance=_v(importance), data=data,
                      recover_steps=recover_steps, val_data=val_data, eval_data=eval_data, lr=lr)
    art = run(_model_path(model), output, cfg)
    if as_json:
        return _emit(artifact_summary(art))
    _print_before_after(art, "pruned")


@app.command()
def distill(
    teacher: Annotated[str, typer.Argument(help="Teacher: a PyTorch classifier (hf or torch artifact).")],
    output: OutOpt,
    data: Annotated[str, typer.Option(help="Labelled training data.")],
    student_layers: Annotated[Optional[int], typer.Option(help="Student = the teacher with N evenly spaced layers kept.")] = None,
    student: Annotated[Optional[str], typer.Option(help="Student HF config/checkpoint, or JSON factory kwargs for torch models.")] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature T.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the KL term (1 - alpha for cross-entropy).")] = 0.5,
    hidden_loss: Annotated[bool, typer.Option("--hidden-loss", help="Add hidden-state MSE between mapped layers.")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 3,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Batch size per process.")] = 32,
    val_data: ValDataOpt = None,
    eval_data: EvalDataOpt = None,
    as_json: JsonOpt = False,
):
    """Distill a smaller student from a teacher (KL at temperature T + cross-entropy, optional hidden MSE)."""
    from ..stages.distill import DistillConfig
    from ..stages.distill import distill as run

    cfg = make_config(DistillConfig, data=data, student_layers=student_layers, student=student, temperature=temperature,
                      alpha=alpha, hidden_loss=hidden_loss, epochs=epochs, lr=lr, batch_size=batch_size,
                      val_data=val_data, eval_data=eval_data)
    art = run(_model_path(teacher), output, cfg)
    if as_json:
        return _emit(artifact_summary(art))
    m = art.manifest.metrics
    t, st = m["teacher"], m["student"]
    console.print(f"[green]distilled[/green] {_p(art.path)}: params {t['params']:,} -> {st['params']:,}, "
                  f"torch latency b8 {t['latency_ms_b8']:.1f} -> {st['latency_ms_b8']:.1f} ms"
                  + (f", accuracy {t['accuracy']:.4f} -> {st['accuracy']:.4f}" if "accuracy" in st else ""))


def _print_before_after(art, verb: str) -> None:
    m = art.manifest.metrics
    b, a = m["before"], m["after"]
    console.print(f"[green]{verb}[/green] {_p(art.path)}: params {b['params']:,} -> {a['params']:,}, "
                  f"torch latency b8 {b['latency_ms_b8']:.1f} -> {a['latency_ms_b8']:.1f} ms"
                  + (f", accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}" if "accuracy" in a else ""))
    if m["prune"].get("note"):
        console.print(f"  note: {m['prune']['note']} (sparsity {m['prune']['sparsity']:.3f})")


def _parse_ints(s: str, opt: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{opt} '{s}': give comma-separated integers, e.g. 1,8") from None


@app.command()
def bench(
    artifacts: Annotated[Optional[list[str]], typer.Argument(help="Artifacts to compare; the first is the baseline.")] = None,
    data: DataOpt = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    seq_len: Annotated[str, typer.Option(help="'auto' (pad to the longest real input in each batch) or a fixed length.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads for every runtime.")] = None,
    runs: Annotated[Optional[int], typer.Option(help="Timed runs per batch size (default 30); language models: "
                                                "generations per prompt length (default 5).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up runs per batch size (default 3); language models: "
                                                  "per prompt length (default 1).")] = None,
    prompt_lengths: Annotated[Optional[str], typer.Option(help="Language models: comma-separated prompt lengths in tokens "
                                                          "(default 128,512).")] = None,
    new_tokens: Annotated[Optional[int], typer.Option(help="Language models: tokens generated per run, greedy, "
                                                      "end-of-sequence ignored (default 128).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json-out", help="Write the results to this JSON file.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write a Markdown report (and a PNG plot beside it).")] = None,
    url: Annotated[Optional[str], typer.Option(help="Load-test a running `edgeopt serve` at this URL instead.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Connections, each sending its next request when the last is answered "
                                                      "(with --url; closed loop; default 8).")] = None,
    rate: Annotated[Optional[float], typer.Option(help="Open loop (with --url): send this many requests per second on a fixed "
                                                  "schedule, whatever the answers; latency counts from the scheduled time.")] = None,
    max_connections: Annotated[Optional[int], typer.Option(help="With --rate: most connections to open (default 256).")] = None,
    processes: Annotated[int, typer.Option(help="Client processes sharing the load (with --url).")] = 1,
    duration: Annotated[Optional[float], typer.Option(help="Seconds to run (with --url).")] = None,
    requests: Annotated[Optional[int], typer.Option(help="Requests to send (with --url; default 200 unless --duration).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before a request counts as a 'timeout' error (with --url; default 30).")] = None,
    items_per_request: Annotated[int, typer.Option(help="Inputs per HTTP request (with --url).")] = 1,
    api_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the server's API key (with --url).")] = None,
    docker_host: Annotated[Optional[str], typer.Option(help="Run the benchmark on this device's Docker engine (ssh://USER@DEVICE), "
                                                       "in the image given as the one argument (an image name or a bundle).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout instead of the table.")] = False,
):
    """Latency (p50/p90/p99), throughput, memory, size and accuracy of artifacts side by side, or of a server (--url);
    language models: time to first token and decode tokens/s per prompt length."""
    from ..bench.report import check_report_paths, rich_table, write_outputs

    lm_opts = prompt_lengths is not None or new_tokens is not None
    if lm_opts and url:
        raise ConfigError("--prompt-lengths and --new-tokens are for language-model artifacts, not --url")
    if docker_host:
        if url or not artifacts or len(artifacts) != 1:
            raise ConfigError("--docker-host takes one image or bundle to benchmark on the device (and no --url)")
        check_report_paths(json_out, report, ())
        from ..package.deploy import remote_bench

        if seq_len != "auto" and not seq_len.isdigit():
            raise ConfigError(f"--seq-len '{seq_len}': give 'auto' or a positive integer")
        _parse_ints(batch_sizes, "--batch-sizes")
        common = [*(["--runs", str(runs)] if runs is not None else []), *(["--warmup", str(warmup)] if warmup is not None else []),
                  *(["--threads", str(threads)] if threads else [])]
        args = ["--batch-sizes", batch_sizes, "--seq-len", seq_len, *common]
        if lm_opts and (batch_sizes != "1,8" or seq_len != "auto"):
            raise ConfigError("--batch-sizes and --seq-len are not for language models; give --prompt-lengths and --new-tokens")
        from ..bench.llm import LLMBenchConfig

        lm_cfg = make_config(LLMBenchConfig, new_tokens=new_tokens,  # checked here, before anything is shipped
                             prompt_lengths=None if prompt_lengths is None else _parse_ints(prompt_lengths, "--prompt-lengths"))
        lm_args = [*(["--prompt-lengths", ",".join(map(str, lm_cfg.prompt_lengths))] if prompt_lengths is not None else []),
                   *(["--new-tokens", str(new_tokens)] if new_tokens is not None else []), *common]
        status = _status_printer(as_json)
        rep = remote_bench(artifacts[0], docker_host, args, data=data, on_status=status,
                           lm_args=lm_args, require_lm=lm_opts)
        from ..bench.llm import LLMBenchReport

        if isinstance(rep, LLMBenchReport):
            from ..bench.llm import rich_table as llm_table
            from ..bench.llm import write_outputs as llm_outputs

            written, table = llm_outputs(rep, json_out, report), llm_table
        else:
            written, table = write_outputs(rep, json_out, report), rich_table
        if as_json:
            return _emit({**rep.model_dump(mode="json"), "written": {k: str(v) for k, v in written.items()}})
        mach = rep.machine
        where = ", ".join(str(x) for x in (mach.get("board"), mach.get("cpu"), f"{mach.get('cores')} cores",
                                            f"L4T {mach['l4t']}" if mach.get("l4t") else None) if x)
        console.print(table(rep, title=f"edgeopt bench on {docker_host} ({where})"))
        for kind, path in written.items():
            console.print(f"{kind}: {_p(path)}")
        return
    inputs = tuple(_model_path(a) for a in artifacts or [])
    check_report_paths(json_out, report, inputs)  # before minutes of benchmarking
    if url:
        if artifacts:
            raise ConfigError("give either artifacts (in-process bench) or --url (HTTP load test), not both")
        from ..bench.http import LoadConfig, load_test

        rep = load_test(make_config(LoadConfig, {"duration_s": "--duration", "timeout_s": "--timeout"}, url=url,
                                    concurrency=concurrency, rate=rate, max_connections=max_connections,
                                    processes=processes, duration_s=duration, requests=requests, timeout_s=timeout,
                                    data=data, items_per_request=items_per_request, api_key_env=api_key_env))
        for w in rep.warnings:  # e.g. the client, not the server, was the limit
            err_console.print(f"warning: {escape(w)}", highlight=False)
    else:
        if not artifacts:
            raise ConfigError("give at least one artifact to benchmark, or --url http://HOST:PORT of a running server")
        from ..bench.core import BenchConfig
        from ..bench.core import bench as run
        from ..bench.llm import all_language_models

        if all_language_models(inputs):
            return _bench_llm(list(inputs), data, batch_sizes, seq_len, prompt_lengths, new_tokens, threads, runs, warmup,
                              json_out, report, as_json)
        if lm_opts:
            raise ConfigError("--prompt-lengths and --new-tokens are for language models (text-generation artifacts); "
                              "use --batch-sizes and --seq-len for these")
        if seq_len != "auto" and not seq_len.isdigit():
            raise ConfigError(f"--seq-len '{seq_len}': give 'auto' or a positive integer")
        cfg = make_config(BenchConfig, data=data, batch_sizes=_parse_ints(batch_sizes, "--batch-sizes"),
                          seq_len=seq_len if seq_len == "auto" else int(seq_len), threads=threads, runs=runs, warmup=warmup)
        rep = run(list(inputs), cfg)
    written = write_outputs(rep, json_out, report, inputs=inputs)
    if as_json:
        return _emit({**rep.model_dump(mode="json"), "written": {k: str(v) for k, v in written.items()}})
    console.print(rich_table(rep))
    if url:
        console.print(escape(rep.describe()), highlight=False)
    for kind, path in written.items():
        console.print(f"{kind}: {_p(path)}")


def _bench_llm(inputs, data, batch_sizes, seq_len, prompt_lengths, new_tokens, threads, runs, warmup, json_out, report,
               as_json) -> None:
    """`edgeopt bench` of language models: time to first token and decode tokens/s per prompt length."""
    from ..bench.llm import LLMBenchConfig, bench_llm, rich_table, write_outputs

    if batch_sizes != "1,8" or seq_len != "auto":
        raise ConfigError("--batch-sizes and --seq-len are not for language models; give --prompt-lengths and --new-tokens")
    cfg = make_config(LLMBenchConfig, data=data, threads=threads, runs=runs, warmup=warmup, new_tokens=new_tokens,
                      prompt_lengths=None if prompt_lengths is None else _parse_ints(prompt_lengths, "--prompt-lengths"))
    rep = bench_llm(inputs, cfg)
    written = write_outputs(rep, json_out, report, inputs=tuple(inputs))
    if as_json:
        return _emit({**rep.model_dump(mode="json"), "written": {k: str(v) for k, v in written.items()}})
    console.print(rich_table(rep))
    for kind, path in written.items():
        console.print(f"{kind}: {_p(path)}")


@app.command()
def serve(
    artifact: Annotated[str, typer.Argument(help="Artifact to serve (ONNX, torch or HF).", envvar="EDGEOPT_ARTIFACT")],
    host: Annotated[str, typer.Option(help="Bind address; 127.0.0.1 keeps it local (use 0.0.0.0 in containers).",
                                      envvar="EDGEOPT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port, 1-65535.", envvar="EDGEOPT_PORT")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most inputs coalesced into one model call (1 turns batching off).",
                                           envvar="EDGEOPT_MAX_BATCH")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="Longest a request waits for others to batch with.",
                                               envvar="EDGEOPT_MAX_WAIT_MS")] = 5.0,
    api_key_env: Annotated[Optional[str], typer.Option(help="Require the API key held in this environment variable.",
                                                       envvar="EDGEOPT_API_KEY_ENV")] = None,
    workers: Annotated[int, typer.Option(min=1, max=256, help="Server processes (each loads the model); /readyz is 200 only when "
                                                            "all are ready, /metrics counts them all.", envvar="EDGEOPT_WORKERS")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads per process.", envvar="EDGEOPT_THREADS")] = None,
    target: Annotated[Optional[Target], typer.Option("--target", "-t", help="Deployment target (default: this host).",
                                                     envvar="EDGEOPT_TARGET")] = None,
    max_items: Annotated[int, typer.Option(help="Inputs per request.", envvar="EDGEOPT_MAX_ITEMS")] = 64,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Request body limit in MB.", envvar="EDGEOPT_MAX_BODY_MB")] = 8.0,
    timeout: Annotated[float, typer.Option(help="Per-request timeout in seconds (504 beyond).", envvar="EDGEOPT_TIMEOUT_S")] = 30.0,
    max_text_chars: Annotated[int, typer.Option(help="Characters per text (422 beyond; tokens past the model's maximum are truncated).",
                                                envvar="EDGEOPT_MAX_TEXT_CHARS")] = 4096,
    max_image_pixels: Annotated[int, typer.Option(help="Pixels per image, read from its header before decoding (422 beyond).",
                                                  envvar="EDGEOPT_MAX_IMAGE_PIXELS")] = 4096 * 4096,
    max_batch_tokens: Annotated[int, typer.Option(help="Most padded tokens (inputs x longest) in one model call: bounds a batch's "
                                                       "work, so a heavy request is split and cannot stall others.",
                                                  envvar="EDGEOPT_MAX_BATCH_TOKENS")] = 2048,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug.", envvar="EDGEOPT_LOG_LEVEL")] = "info",
    log_format: Annotated[str, typer.Option(help="text, or json: one JSON object per line (with request_id on access lines).",
                                            envvar="EDGEOPT_LOG_FORMAT")] = "text",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (at info level), "
                                             "with the X-Request-ID it echoes.", envvar="EDGEOPT_ACCESS_LOG")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="Language models: most tokens one request may generate (its max_tokens; "
                                                "422 beyond); also the default, capped by the context.",
                                                envvar="EDGEOPT_MAX_NEW_TOKENS")] = 512,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="Language models: most prompt tokens (422 beyond); "
                                                             "default: the model's context.",
                                                             envvar="EDGEOPT_MAX_PROMPT_TOKENS")] = None,
    max_generations: Annotated[int, typer.Option(help="Language models: generations running at once; more wait for "
                                                 "a slot (504 after --timeout).", envvar="EDGEOPT_MAX_GENERATIONS")] = 4,
):
    """Serve an artifact over HTTP: /v1/predict, /v1/model, /healthz, /readyz, /metrics.

    Language models (text-generation) get OpenAI's /v1/completions and /v1/chat/completions
    (streamed with "stream": true) instead of /v1/predict.

    Every option can also come from an environment variable (EDGEOPT_PORT, EDGEOPT_MAX_BATCH, ...;
    see each option), so a container's command stays `edgeopt serve`."""
    from .._optional import SERVER_MODULES, require

    require("serve", purpose="edgeopt serve", modules=SERVER_MODULES)
    from ..serve.app import ServeSettings
    from ..serve.app import serve as run

    target = _v(target)
    option_names = {"timeout_s": "--timeout", "max_body_bytes": "--max-body-mb"}
    from ..serve.logs import check_level

    log_level = check_level(log_level)  # before the banner: a bad level is the only line
    settings = make_config(ServeSettings, option_names, artifact=str(_model_path(artifact)), max_batch=max_batch, max_wait_ms=max_wait_ms,
                           api_key_env=api_key_env, threads=threads, target=target, max_items=max_items,
                           max_body_bytes=int(max_body_mb * 1024 * 1024), timeout_s=timeout,
                           max_text_chars=max_text_chars, max_image_pixels=max_image_pixels, max_batch_tokens=max_batch_tokens,
                           workers=workers, access_log=access_log, log_format=log_format.lower(),
                           max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                           max_generations=max_generations)
    if api_key_env and not os.environ.get(api_key_env):
        raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is empty or unset; export it with the key")
    from ..artifact import load_artifact
    from ..serve.app import check_bind, check_servable

    art = load_artifact(settings.artifact)  # verified once; a bad path is one line, before any banner
    check_servable(art)  # hf/torch artifacts and language models need [train]: say so before listening
    check_bind(host, port)  # a port in use is one error line too
    if settings.log_format == "text":  # JSON logs stay JSON, line for line (uvicorn says where it listens)
        err_console.print(f"serving {_p(settings.artifact)} on http://{host}:{port} (docs: /docs, metrics: /metrics)")
    run(settings, host=host, port=port, log_level=log_level, artifact=art)


@app.command("run")
def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    force: Annotated[bool, typer.Option("--force", help="Re-run every stage, ignoring the cache.")] = False,
    validate_only: Annotated[bool, typer.Option("--validate", help="Only validate the recipe.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stages' results as one JSON object on stdout.")] = False,
):
    """Run a recipe's stages in order; finished stages are cached and skipped on the next run."""
    from ..recipe import load_recipe, run_recipe

    r = load_recipe(recipe)
    if validate_only:
        if as_json:
            return _emit({"recipe": str(r.path), "valid": True, "workdir": str(r.workdir),
                          "stages": [{"name": s.name, "kind": s.kind} for s in r.stages]})
        console.print(f"[green]valid[/green]: {_p(r.path)} — {len(r.stages)} stages: " + ", ".join(f"{s.name} ({s.kind})" for s in r.stages))
        return
    res = run_recipe(r, force=force, on_stage=lambda n, st: err_console.print(f"[bold]{escape(n)}[/bold]: {st}"))
    _render_run(res, as_json, title=r.name)


def _render_run(res, as_json: bool, title: str) -> None:
    from ..artifact import load_artifact
    from ..bench import llm
    from ..bench.report import rich_table

    if as_json:
        stages = []
        for s in res.stages:
            rec: dict[str, Any] = {"name": s.name, "kind": s.kind, "path": str(s.path), "cached": s.cached, "seconds": s.seconds}
            if s.report is not None:
                rec["report"] = s.report.model_dump(mode="json")
            else:
                rec.update(artifact_summary(load_artifact(s.path, verify=False)))
            stages.append(rec)
        return _emit({"recipe": str(res.recipe.path), "workdir": str(res.recipe.workdir), "stages": stages})
    for s in res.stages:
        console.print(f"{escape(s.name):<16} {s.kind:<16} {'cached' if s.cached else f'{s.seconds:.1f}s':>8}  {_p(s.path)}")
        if s.report is not None:
            table = llm.rich_table if isinstance(s.report, llm.LLMBenchReport) else rich_table
            console.print(table(s.report, title=f"{title}: {s.name}"))
            console.print(f"report: {_p(s.path / 'report.md')}")


@app.command()
def inspect(
    artifact: Annotated[str, typer.Argument(help="Artifact directory or HF checkpoint folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
):
    """Print an artifact's format, IO, lineage and metrics."""
    from ..artifact import load_artifact

    art = load_artifact(_model_path(artifact))
    m = art.manifest
    if as_json:
        print(json.dumps(m.model_dump(mode="json"), indent=2))
        return
    console.print(f"[bold]{_p(art.path)}[/bold]")
    from ..formats import handler_for

    console.print(f"format {m.format} ({m.model.precision}), task {m.task}, edgeopt {m.edgeopt_version}")
    for key, value in handler_for(art).describe(art).items():
        console.print(f"  {key}: {_p(value)}")
    if m.labels:
        console.print(f"labels ({len(m.labels)}): {', '.join(m.labels[:12])}{' ...' if len(m.labels) > 12 else ''}")
    for t in m.io.inputs:
        console.print(f"  input  {t.name}: {t.dtype} {t.shape}")
    for t in m.io.outputs:
        console.print(f"  output {t.name}: {t.dtype} {t.shape}")
    if m.io.preprocessing is not None:
        console.print(f"  preprocessing: {m.io.preprocessing.model_dump()}")
    console.print("lineage:")
    for i, e in enumerate(m.lineage):
        cfg = {k: v for k, v in e.config.items() if v not in (None, [], {}) and k != "kind"}
        console.print(f"  {i}. {e.stage} {('parent ' + e.parent_hash[:12]) if e.parent_hash else ''} {_p(json.dumps(cfg, default=str))}")
    console.print("metrics:")
    console.print_json(json.dumps(m.metrics, default=str))
    if (art.path / "manifest.json").is_file():
        console.print(f"files: {len(m.files)} (sha256 verified)")
    else:
        console.print("files: a plain checkpoint folder, not an edgeopt artifact (no manifest.json)")


@app.command()
def package(
    artifact: Annotated[str, typer.Argument(help="ONNX artifact to serve on the target.")],
    target: Annotated[Target, typer.Option("--target", "-t", help="Target profile (edgeopt targets).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the bundle (written atomically); an existing "
                                         "path is replaced only if it is an edgeopt bundle.")],
    build: Annotated[bool, typer.Option("--build", help="Build the image on the local Docker engine and report its size.")] = False,
    tag: Annotated[Optional[str], typer.Option(help="Image name (default: edgeopt/MODEL:TARGET-SHA8).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the built image to its registry (with --build; docker login first).")] = False,
    base_image: Annotated[Optional[str], typer.Option(help="Base image instead of the profile's; a python:*-slim image or a "
                                                      "Debian one with python3 + python3-venv, of the target's Python.")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port the server listens on in the container.")] = 8000,
    wheelhouse: Annotated[Optional[Path], typer.Option(help="Folder of extra wheels (offline hosts, Jetson's index).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print bundle.json's content as one JSON object.")] = False,
):
    """Write a bundle for a target (model, Dockerfile, offline wheelhouse); --build makes its image."""
    from ..package import PackageConfig
    from ..package import package as run

    cfg = make_config(PackageConfig, target=_v(target), base_image=base_image, tag=tag, port=port, build=build,
                      push=push, wheelhouse=str(wheelhouse) if wheelhouse else None)
    status = _status_printer(as_json)
    b = run(_model_path(artifact), output, cfg, on_status=status)
    if as_json:
        return _emit(b.model_dump(mode="json"))
    size = sum((Path(b.path) / f).stat().st_size for f in b.files) / 1e6
    console.print(f"[green]packaged[/green] {_p(b.path)} for {b.target} ({b.platform}, {size:.0f} MB with "
                  f"{len(b.packages)} wheels; base {_p(b.base_image)})")
    if b.left_out:
        console.print(f"  left out: {', '.join(b.left_out)}")
    if b.image:
        console.print(f"  image {_p(b.tag)}: {b.image['size_bytes'] / 1e6:.0f} MB ({b.image['architecture']})"
                      + (f", pushed {b.image['pushed_digest']}" if b.image.get("pushed_digest") else ""))
        console.print(f"  run: docker run -d -p 8000:{b.port} {_p(b.tag)}")
    else:
        console.print(f"  build: edgeopt package ... --build, or docker build --platform {b.platform} -t {_p(b.tag)} {_p(b.path)}")


@app.command()
def deploy(
    image: Annotated[str, typer.Argument(help="Image name, or a bundle folder from `edgeopt package` (built here if needed).")],
    docker_host: Annotated[str, typer.Option(help="The device's Docker engine, e.g. ssh://pi@raspberrypi.local.",
                                             envvar="EDGEOPT_DOCKER_HOST")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on the device.")] = 8000,
    name: Annotated[Optional[str], typer.Option(help="Container name (default: edgeopt-MODEL); an edgeopt container "
                                                "of that name is replaced.")] = None,
    wait: Annotated[float, typer.Option(min=1, help="Seconds to wait for /readyz (TensorRT targets build their engine first).")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print the deployment as one JSON object.")] = False,
):
    """Ship an image to a device without a registry (docker save | load over ssh), start it, wait until ready."""
    from ..package.deploy import deploy as run

    status = _status_printer(as_json)
    d = run(image, docker_host, port=port, name=name, wait_s=wait, on_status=status)
    if as_json:
        return _emit(d.model_dump(mode="json"))
    console.print(f"[green]deployed[/green] {_p(d.image)} as {_p(d.name)} on {_p(d.docker_host)} "
                  f"({'shipped' if d.shipped else 'already there'}; ready in {d.ready_s:.1f} s)")
    console.print(f"  {d.url}  (POST {', '.join(d.url + r for r in d.routes)}, {d.url}/metrics)")


targets_app = typer.Typer(help="Deployment targets: list them, or show one profile in full.", invoke_without_command=True,
                          no_args_is_help=False)
app.add_typer(targets_app, name="targets")


@targets_app.callback()
def targets(ctx: typer.Context,
            as_json: Annotated[bool, typer.Option("--json", help="Print the targets as one JSON object.")] = False):
    """List deployment targets (`edgeopt targets show NAME` for one in full)."""
    if ctx.invoked_subcommand is not None:
        return
    from ..targets import get_target, target_names

    if as_json:
        return _emit({"targets": [get_target(n).model_dump(mode="json") for n in target_names()]})
    for n in target_names():
        t = get_target(n)
        q = t.quantization
        alias = f" (alias: {', '.join(t.aliases)})" if t.aliases else ""
        console.print(f"[bold]{n:<13}[/bold] {t.arch:<6} {t.runtime:<12} int8 act {q.activation_type}"
                      f"{' sym' if q.activation_symmetric else ''}  {escape(t.description)}{alias}")


@targets_app.command("show")
def targets_show(
    name: Annotated[Target, typer.Argument(help="Target name or alias.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
):
    """Show one target profile: platform, runtime packages, providers, export and int8 rules, engine policy, image."""
    from ..targets import get_target

    t = get_target(_v(name))
    data = t.model_dump(mode="json")
    if as_json:
        return _emit(data)
    import yaml

    console.print(f"[bold]{t.name}[/bold]: {escape(t.description)}")
    console.print(escape(yaml.safe_dump({k: v for k, v in data.items() if k not in ("name", "description")},
                                        sort_keys=False, width=120).rstrip()))


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its artifacts and report.")] = Path("runs/demo"),
    force: Annotated[bool, typer.Option("--force", help="Re-run every stage, ignoring the cache.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stages' results as one JSON object on stdout.")] = False,
):
    """Fine-tune all-MiniLM-L6-v2 on product descriptions, export, quantize, benchmark, and print the table."""
    from ..bench.report import rich_table
    from ..demo import run_demo

    res = run_demo(workdir, force=force, on_stage=lambda n, st: err_console.print(f"[bold]{n}[/bold]: {st}"))
    if as_json:
        return _render_run(res, True, title="edgeopt demo")
    for s in res.stages:
        if s.report is not None:
            console.print(rich_table(s.report, title="edgeopt demo: product classifier"))
            console.print(f"report: {_p(s.path / 'report.md')} (plot: {_p(s.path / 'report.png')})")


ProviderOpt = "ONNX Runtime execution provider for {}, e.g. CUDAExecutionProvider (repeat, or comma-separate, for a fallback list)."


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Reference artifact (hf, torch, onnx, trt); its preprocessing prepares the inputs of both.")],
    b: Annotated[str, typer.Argument(help="Artifact checked against A: same task, input and output names.")],
    data: DataOpt = None,
    samples: Annotated[Optional[int], typer.Option(help="Samples to compare (default 16).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Samples per run (default 8).")] = None,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance: |B - A| <= atol + rtol * |A| (default 1e-3).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance (default 1e-3).")] = None,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Also compare every float intermediate tensor of two ONNX graphs "
                                            "(or TensorRT engines) on the first batch; name the first beyond tolerance.")] = False,
    provider_a: Annotated[Optional[list[str]], typer.Option("--provider-a", help=ProviderOpt.format("A (onnx artifacts)"))] = None,
    provider_b: Annotated[Optional[list[str]], typer.Option("--provider-b", help=ProviderOpt.format("B (onnx artifacts)"))] = None,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads for both runtimes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as one JSON object on stdout.")] = False,
):
    """Run two artifacts on the same real inputs; report each output's error (exit 1 beyond tolerance)."""
    from ..compare import CompareConfig
    from ..compare import compare as run

    def providers(values: Optional[list[str]]) -> Optional[list[str]]:
        return [p.strip() for v in values for p in v.split(",") if p.strip()] if values else None

    cfg = make_config(CompareConfig, {"providers_a": "--provider-a", "providers_b": "--provider-b"}, data=data,
                      samples=samples, batch_size=batch_size, atol=atol, rtol=rtol, per_layer=per_layer,
                      providers_a=providers(provider_a), providers_b=providers(provider_b), threads=threads)
    res = run(_model_path(a), _model_path(b), cfg)
    if as_json:
        _emit(res.model_dump(mode="json"))
    else:
        _render_compare(res)
    res.raise_if_failed()  # after the table / JSON: the numbers are printed either way


def _render_compare(res) -> None:
    from rich.table import Table
    from rich.text import Text

    def num(v, fmt=".3g") -> str:
        return "-" if v is None else format(v, fmt)

    def side(r) -> str:
        return f"{r.path} ({r.format} {r.precision}{', ' + ', '.join(r.providers) if r.providers else ''})"

    console.print(Text(f"A: {side(res.a)}\nB: {side(res.b)}\n{res.samples} samples from {res.data}, "
                       f"atol {res.config.atol:g}, rtol {res.config.rtol:g}"))
    t = Table()
    for c in ("output", "shape", "max abs err", "max rel err", "median abs err", "top-1 agreement", "cosine mean/min", "within"):
        t.add_column(c, justify="left" if c in ("output", "shape") else "right")
    for o in res.outputs:
        cos = "-" if o.cosine_mean is None else f"{o.cosine_mean:.6f} / {o.cosine_min:.6f}"
        within = "yes" if o.within_tolerance else ("NO: shape " + str(o.shape_b) if o.shape_b is not None else "NO")
        t.add_row(*(Text(x) for x in (o.name, str(o.shape), num(o.max_abs_err), num(o.max_rel_err), num(o.median_abs_err),
                                      num(o.top1_agreement, ".2%"), cos, within)))
    console.print(t)
    pl = res.per_layer
    if pl is None:
        return
    first = pl.first_divergent
    console.print(Text(f"per layer, first {pl.samples} samples: {pl.compared} tensors compared (only in A {pl.only_in_a}, "
                       f"only in B {pl.only_in_b}" + (f", shape differs {len(pl.shape_mismatch)}" if pl.shape_mismatch else "")
                       + "); " + (f"first beyond tolerance: {first.name} ({first.op_type} node {first.node}), max abs err "
                                  f"{first.max_abs_err:.3g}" if first else "all within tolerance")))
    if pl.worst:
        w = Table(title=Text("largest per-layer errors"))
        for c in ("tensor", "node", "op", "max abs err", "max rel err", "within"):
            w.add_column(c, justify="right" if "err" in c else "left")
        for d in pl.worst:
            w.add_row(*(Text(x) for x in (d.name, d.node or "-", d.op_type or "-", num(d.max_abs_err), num(d.max_rel_err),
                                          "yes" if d.within_tolerance else "NO")))
        console.print(w)


@app.command("generate")
def generate_cmd(
    model: Annotated[str, typer.Argument(help="A text-generation artifact: a Hugging Face causal-LM checkpoint folder "
                                              "(Llama/SmolLM, Qwen2, Qwen3, Phi-3, Gemma, Gemma 2).")],
    prompt: Annotated[str, typer.Option(help="The text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0: greedy (the default); above 0: sample.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the K likeliest tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample among the likeliest tokens whose probabilities reach P (1: all).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for sampling (same seed, same text).")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="A string that ends the continuation (repeatable; not included).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the tokenizer's chat template as a user turn.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="PyTorch threads (default: all cores).")] = None,
    as_json: JsonOpt = False,
):
    """Continue a prompt with a language model (KV cache; greedy unless --temperature): prints the continuation."""
    from ..llm.generate import GenerateConfig, generate

    cfg = make_config(GenerateConfig, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      seed=seed, stop=list(stop or []), chat=chat, threads=threads)
    res = generate(_model_path(model), prompt, cfg)
    if as_json:
        return _emit(res.model_dump(mode="json"))
    sys.stdout.write(res.text + "\n")
    rate = f", {res.decode_tokens_per_s:.1f} tokens/s" if res.decode_tokens_per_s else ""
    _status_printer(False)(f"{len(res.tokens)} tokens ({res.stop_reason}); first token {res.time_to_first_token_ms:.0f} ms"
                           f"{rate}; {res.backend}")


@app.command("sensitivity")
def sensitivity_cmd(
    model: Annotated[str, typer.Argument(help="An fp32 ONNX artifact.")],
    data: Annotated[Optional[str], typer.Option(help="Inputs to measure on (.jsonl, .npz, sklearn:digits; default: the "
                                                     "artifact's sample inputs).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Samples to measure on (default 32).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Rows to show, most sensitive first.")] = 10,
    target: TargetOpt = None,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Per-channel weight scales.")] = True,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
    as_json: JsonOpt = False,
):
    """Rank nodes by how much quantizing each alone (dynamic int8) moves the output from fp32; keep the
    worst in float with `edgeopt quantize --exclude-nodes`."""
    from ..sensitivity import SensitivityConfig, sensitivity

    cfg = make_config(SensitivityConfig, data=data, samples=samples, target=_v(target), per_channel=per_channel, threads=threads)
    res = sensitivity(_model_path(model), cfg)
    if as_json:
        return _emit(res.model_dump(mode="json"))
    from rich.table import Table
    from rich.text import Text

    def row(r, rank: str):
        agree = "-" if r.top1_agreement is None else f"{r.top1_agreement:.2%}"
        return (rank, r.node, r.op_type, f"{r.error:.2e}", f"{r.cosine_min:.6f}", agree)

    console.print(Text(f"{res.artifact}: {len(res.nodes)} quantizable nodes, {res.samples} samples from {res.data}, "
                       f"int8 for {res.target} ({'per-channel' if res.per_channel else 'per-tensor'}), {res.seconds:.0f} s"))
    t = Table()
    for c in ("#", "node (quantized alone)", "op", "1 - cosine mean", "cosine min", "top-1 agreement"):
        t.add_column(c, justify="left" if c in ("node (quantized alone)", "op") else "right")
    for i, r in enumerate(res.worst(top), 1):
        t.add_row(*(Text(x) for x in row(r, str(i))))
    t.add_row(*(Text(x) for x in row(res.full.model_copy(update={"node": "all of them"}), "")))
    console.print(t)
    worst = [r.node for r in res.worst(min(3, top))]
    console.print(Text(f"to keep the worst in float: edgeopt quantize {model} -o OUT --exclude-nodes {','.join(worst)}"))


@app.command("tune")
def tune_cmd(
    model: Annotated[str, typer.Argument(help="An fp32 ONNX artifact (a Hugging Face or torch one is exported first).")],
    output: OutOpt,
    data: Annotated[str, typer.Option(help="Real inputs (.jsonl, .npz, sklearn:digits): latency at their lengths; "
                                           "with labels, accuracy.")],
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Budget: points of accuracy below fp32 (labelled "
                                                                    "data; default 1 when the data has labels).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Budget: top-1 agreement with fp32 (classifier) or minimum "
                                                                "cosine to fp32 (embeddings); default 0.98 without labels.")] = None,
    target: TargetOpt = None,
    budget_minutes: Annotated[float, typer.Option(help="Stop trying new variants after this many minutes.")] = 20.0,
    calib: Annotated[Optional[str], typer.Option(help="Calibration data for static variants (default: --data).")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to time.")] = "1,8",
    seq_len: Annotated[str, typer.Option(help="'auto' (each batch padded to its longest real input) or a fixed length.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads (default: the target's).")] = None,
    eval_samples: Annotated[Optional[int], typer.Option(help="Samples for accuracy and fidelity (default 512).")] = None,
    max_float_nodes: Annotated[Optional[int], typer.Option(help="Most nodes kept in float by the sensitivity ranking (default 8).")] = None,
    static: Annotated[bool, typer.Option("--static/--no-static", help="Try static Q/DQ variants (calibrated).")] = True,
    openvino: Annotated[bool, typer.Option("--openvino/--no-openvino", help="Also try OpenVINO on the fp32 graph (f32, and "
                                                                           "bf16 where the CPU has it), where installed.")] = True,
    cache_dir: Annotated[Optional[str], typer.Option(help="Where measured variants are cached (default ~/.cache/edgeopt; "
                                                           "a re-run resumes from it).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure every variant again and cache nothing.")] = False,
    docker_host: Annotated[Optional[str], typer.Option(help="Time the variants on this device's Docker engine "
                                                           "(ssh://USER@DEVICE), in the target's serving image.")] = None,
    image: Annotated[Optional[str], typer.Option(help="With --docker-host: the image (or bundle) to time in; default: "
                                                     "package the fp32 model for --target.")] = None,
    base_image: Annotated[Optional[str], typer.Option(help="With --docker-host and no --image: the base image to package on.")] = None,
    as_json: JsonOpt = False,
):
    """Search int8 variants (dynamic/static, per-channel/per-tensor/mixed, float nodes by sensitivity, graph
    rewrites, session options; OpenVINO where installed) and write the fastest within the accuracy budget,
    with every variant and the Pareto front."""
    from ..tuning import TuneConfig, tune

    if seq_len != "auto" and not seq_len.isdigit():
        raise ConfigError(f"--seq-len '{seq_len}': give 'auto' or a positive integer")
    cfg = make_config(TuneConfig, data=data, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
                      target=_v(target), budget_minutes=budget_minutes, calib=calib,
                      batch_sizes=_parse_ints(batch_sizes, "--batch-sizes"),
                      seq_len=seq_len if seq_len == "auto" else int(seq_len), threads=threads, eval_samples=eval_samples,
                      max_float_nodes=max_float_nodes, static=static, openvino=openvino, cache_dir="" if no_cache else cache_dir,
                      docker_host=docker_host, image=image, base_image=base_image)
    res = tune(_model_path(model), output, cfg, on_progress=_status_printer(as_json))
    if as_json:
        return _emit(res.model_dump(mode="json"))
    from rich.table import Table

    c = res.chosen
    console.print(f"[green]tuned[/green] {_p(res.artifact)}: {escape(c.label)}, {c.speedup:.2f}x fp32 "
                  f"({res.budget}; {len(res.trials)} variants in {res.seconds / 60:.1f} min"
                  + (f"; stopped early: {escape(res.stopped)}" if res.stopped else "") + ")")
    t = Table(title="Pareto front (speed vs quality) and the chosen variant")
    batches = sorted({int(b) for tr in res.trials for b in tr.latency})
    for col in ("variant", *[f"b{b} ms" for b in batches], "speed", res.metric, "budget"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    from ..tuning.pareto import quality_value

    for tr in sorted((x for x in res.trials if x.on_front or x is c), key=lambda x: -x.speedup):
        ms = [f"{tr.latency[b]['ms']:.2f}" if b in tr.latency else "-" for b in batches]
        q = quality_value(tr, res.metric)
        mark = "ref" if tr.variant.ptq == "fp32" else ("yes" if tr.meets_budget else "no")
        name = f"[bold]{escape(tr.label)}[/bold]" if tr is c else escape(tr.label)
        t.add_row(name, *ms, f"{tr.speedup:.2f}x", f"{q:.2%}" if res.metric == "accuracy" else f"{q:.4f}", mark)
    console.print(t)
    console.print(f"report: {_p(res.report)}")


def _click_exceptions():
    """Typer >= 0.25 ships its own copy of click; older ones use click itself."""
    try:
        from typer._click import exceptions as ex  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover
        from click import exceptions as ex
    return ex


def main(argv: Optional[list[str]] = None) -> None:
    ex = _click_exceptions()

    args = list(sys.argv[1:] if argv is None else argv)
    # ONNX Runtime >= 1.25 on Linux writes a telemetry cache ($TMPDIR/.ses) and uploads events unless
    # opted out before it loads; edgeopt writes nothing outside its outputs, and devices are often
    # offline. ORT_DISABLE_TELEMETRY=0 in the environment keeps ONNX Runtime's default.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if not sys.stdout.isatty():  # --help in a pipe or log: wide enough that no help text is cut off
        import typer.rich_utils

        typer.rich_utils.MAX_WIDTH = typer.rich_utils.MAX_WIDTH or 250
    debug = "--debug" in args or bool(os.environ.get("EDGEOPT_DEBUG"))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        console.quiet = True
    # A container stop sends SIGTERM: unwind like Ctrl-C, so partial outputs and temporary
    # folders are removed (`serve` installs uvicorn's own graceful handler instead).
    from ..outputs import Terminated

    def _terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, _terminate)
    if not debug:  # library deprecation chatter is not the user's problem
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    scratch = _private_tmpdir()
    try:
        _run(app, ex, args, debug, Terminated)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _private_tmpdir() -> str:
    """One private temporary folder for this process and its children, removed at exit: what
    libraries leave in $TMPDIR (torch's inductor cache folder, ONNX Runtime's telemetry cache...)
    goes there instead of the machine's temporary directory."""
    import tempfile

    scratch = tempfile.mkdtemp(prefix="edgeopt-")
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    return scratch


def _run(app, ex, args: list[str], debug: bool, Terminated) -> None:
    try:
        rc = app(args=args, prog_name="edgeopt", standalone_mode=False)
    except ex.ClickException as e:  # usage errors: bad option, missing argument; one line like ours
        msg = " ".join(e.format_message().replace("Value error, ", "").split())
        ctx = getattr(e, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _print_error(msg + hint)
        sys.exit(2)
    except EdgeoptError as e:
        if debug:
            raise
        _print_error(str(e))
        sys.exit(e.exit_code)
    except Terminated as e:
        err_console.print("terminated; finished artifacts are kept, partial ones removed")
        sys.exit(e.code)
    except Exception as e:
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        _print_error(f"unexpected {type(e).__name__}: {first} (re-run with --debug for the traceback)")
        sys.exit(1)
    if rc == 130:  # typer turns Ctrl-C into exit code 130
        err_console.print("interrupted; finished artifacts are kept, partial ones removed")
    sys.exit(rc if isinstance(rc, int) else 0)


def _print_error(msg: str) -> None:
    from rich.text import Text

    err_console.print(Text("error: ", style="red") + Text(msg), highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
