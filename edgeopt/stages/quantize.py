"""ONNX Runtime post-training quantization (dynamic, or static QDQ) with per-target formats,
followed by an accuracy / fidelity check against the parent model."""
from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from ..artifact import Artifact, Manifest, finalize, load_artifact, write_artifact
from ..errors import ConfigError, EdgeoptError, StageError, ValidationError
from ..outputs import check_output
from .registry import StageConfig, stage

log = logging.getLogger("edgeopt.quantize")


class QuantizeConfig(StageConfig):
    kind: Literal["quantize"] = "quantize"
    ptq: Literal["dynamic", "static"] = "dynamic"
    calib: Optional[str] = None  # dataset for static calibration
    calib_samples: int = Field(128, ge=1)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    target: Optional[str] = None  # None: the host's CPU target
    eval_data: Optional[str] = None  # labelled data: accuracy; otherwise fidelity on calib/sample data
    eval_samples: Optional[int] = Field(None, ge=1)
    max_accuracy_drop: Optional[float] = Field(None, ge=0)  # in points; exceeded -> error
    # nodes (by name in the graph being quantized) and op types kept in float
    exclude_nodes: list[str] = Field(default_factory=list)
    exclude_op_types: list[str] = Field(default_factory=list)
    # mixed granularity (dynamic, per_channel false): these nodes per channel, the others per tensor
    per_channel_nodes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _static_needs_calib(self):
        if self.ptq == "static" and not self.calib:
            raise ValueError("static quantization needs calibration data: give --calib DATA (recipes: calib: DATA)")
        if self.per_channel_nodes and (self.ptq != "dynamic" or self.per_channel):
            raise ValueError("per_channel_nodes mixes granularity in dynamic quantization with per_channel false "
                             "(--ptq dynamic --per-tensor)")
        return self


@stage("quantize")
def quantize(model: Artifact | str | Path, out: str | Path, config: QuantizeConfig) -> Artifact:
    from ..models.preprocess import Preprocessor

    cfg = config
    parent = model if isinstance(model, Artifact) else load_artifact(model)
    check_output(out, parent, cfg)
    target = check_quantizable(parent, cfg)
    pre = Preprocessor(parent)
    with write_artifact(out, parent, cfg) as tmp:
        manifest = build_quantized(parent, tmp, cfg, target, pre, stage="quantize", config=cfg.model_dump())
        manifest = finalize(tmp, manifest)
    return Artifact(Path(out).expanduser().resolve(), manifest)


def build_quantized(parent: Artifact, tmp: Path, cfg: QuantizeConfig, target, pre, *, stage: str, config: dict,
                    session_config: Optional[dict[str, str]] = None, rewrites: Optional[list[str]] = None) -> Manifest:
    """Quantize ``parent`` into the folder ``tmp`` (model.onnx, tokenizer) and measure it against the
    parent; return the child manifest (not yet finalized). Shared by the quantize and tune stages."""
    from ..metrics import sample_dataset

    pm = parent.manifest
    src = parent.path / pm.model.file
    external = pm.model.external_data
    dst = tmp / "model.onnx"
    try:
        prepped = tmp / "preprocessed.onnx"
        _pre_process(src, prepped, external)
        fmt_record = quantize_graph(prepped, dst, cfg, target, pre, external)
        if rewrites:  # tune's graph rewrites (edgeopt.tuning.rewrites), with session_config to keep them
            from ..tuning.rewrites import apply_rewrites

            fmt_record["rewrites"] = apply_rewrites(dst, rewrites)
        for f in tmp.glob("preprocessed.onnx*"):
            f.unlink()
    except EdgeoptError:  # our own errors (bad calibration data...) keep their meaning and exit code
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"ONNX Runtime quantization failed ({msg[:300]})") from e
    for f in tmp.glob("*.onnx_augment*"):
        f.unlink()
    _copy_preprocessing(parent, tmp)
    model = {**pm.model.model_dump(), "file": "model.onnx", "precision": "int8", "quantization": fmt_record,
             "target": target.name}
    if session_config:
        model["session_config"] = dict(session_config)
    manifest = pm.child(stage=stage, config=config, model=model)
    child = Artifact(tmp, manifest)
    manifest.metrics = _measure(parent, child, cfg, pre, sample_dataset)
    manifest.metrics["size_bytes"] = sum(f.stat().st_size for f in tmp.glob("model.onnx*"))
    manifest.metrics["parent_size_bytes"] = parent.manifest.metrics.get("size_bytes")
    return manifest


def quantize_graph(prepped: Path, dst: Path, cfg: QuantizeConfig, target, pre, external: bool = False) -> dict:
    """Run ONNX Runtime's quantizer on a pre-processed fp32 graph as ``cfg`` says (dynamic, dynamic with
    mixed granularity, or static QDQ) in ``target``'s int8 format; write ``dst``; return the record
    of what was done (for the manifest)."""
    from onnxruntime.quantization import quantize_dynamic

    from ..data import load_dataset

    q = target.quantization
    per_channel = effective_per_channel(target, cfg.per_channel)
    record = {
        "mode": cfg.ptq, "target": target.name, "per_channel": per_channel, "reduce_range": target.reduce_range(),
        "weight_type": q.weight_type, "weight_symmetric": q.weight_symmetric,
        "activation_type": "uint8 (dynamic)" if cfg.ptq == "dynamic" else q.activation_type,
        "activation_symmetric": q.activation_symmetric if cfg.ptq == "static" else False,
        "quantize_bias": q.quantize_bias if cfg.ptq == "static" else False,
    }
    op_types = exclusions(prepped, cfg)
    if cfg.exclude_nodes or cfg.exclude_op_types:
        record.update(excluded_nodes=list(cfg.exclude_nodes), excluded_op_types=list(cfg.exclude_op_types))
    exclude = list(cfg.exclude_nodes)
    if cfg.ptq == "dynamic":
        mixed = [n for n in cfg.per_channel_nodes if n not in exclude] if not per_channel else []
        first = dst.with_name("per-tensor.onnx") if mixed else dst
        quantize_dynamic(prepped, first, use_external_data_format=external, op_types_to_quantize=op_types,
                         nodes_to_exclude=(exclude + mixed) or None, **dynamic_options(target, per_channel))
        if mixed:  # second pass: the listed nodes, per channel, on the per-tensor graph
            with _quiet_requantize_warning():
                quantize_dynamic(first, dst, use_external_data_format=external, nodes_to_quantize=mixed,
                                 **dynamic_options(target, True))
            for f in dst.parent.glob("per-tensor.onnx*"):
                f.unlink()
            record["per_channel_nodes"] = mixed
        return record
    calib = load_dataset(cfg.calib, kind=pre.kind).take(cfg.calib_samples)
    record.update(method=cfg.method, calib=calib.source, calib_samples=len(calib))
    with contextlib.redirect_stdout(sys.stderr):  # ONNX Runtime's calibrators print progress: keep stdout for --json
        _quantize_static(prepped, dst, cfg, target, pre, calib, per_channel, op_types, exclude, external)
    return record


@contextlib.contextmanager
def _quiet_requantize_warning():
    """ONNX Runtime warns on the root logger that a graph holding int8 ops may be a QAT model; the
    second pass of mixed granularity quantizes such a graph on purpose."""
    def drop(record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _quantize_static(prepped, dst, cfg, target, pre, calib, per_channel, op_types, exclude, external) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    q = target.quantization
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    # Graphs holding fused contrib ops (Attention, SkipLayerNormalization...) have weights without
    # inferred types; without DefaultTensorType quantization stops at "Unable to find data type".
    quantize_static(
        prepped, dst, _Reader(pre, calib.samples, _one_length(pre, calib.samples) if cfg.method != "minmax" else None),
        quant_format=QuantFormat.QDQ, per_channel=per_channel,
        op_types_to_quantize=op_types, nodes_to_exclude=exclude or None,
        reduce_range=target.reduce_range(), activation_type=qtype[q.activation_type],
        weight_type=qtype[q.weight_type], use_external_data_format=external,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[cfg.method],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "ActivationSymmetric": q.activation_symmetric,
                       "WeightSymmetric": q.weight_symmetric,
                       # TensorRT's parser rejects int32 bias DequantizeLinear nodes
                       "QuantizeBias": q.quantize_bias},
    )


def effective_per_channel(target, per_channel: bool) -> bool:
    """The target's int8 format may fix the weight granularity (TensorRT: per channel)."""
    q = target.quantization
    return q.per_channel if q.per_channel is not None else per_channel


def check_quantizable(parent: Artifact, cfg: QuantizeConfig):
    """The target for quantizing ``parent`` as ``cfg`` says; ConfigError for what cannot be done."""
    from ..targets import get_target

    require_fp32_onnx(parent, "ONNX Runtime PTQ takes an onnx artifact")
    target = get_target(cfg.target)
    if target.runtime == "tensorrt" and cfg.ptq == "dynamic":
        raise ConfigError(f"target '{target.name}' runs TensorRT, which has no dynamic quantization; use --ptq static with --calib DATA")
    return target


def require_fp32_onnx(art: Artifact, why: str) -> None:
    """ConfigError unless ``art`` is an fp32 ONNX artifact (what ONNX Runtime quantization starts from)."""
    m = art.manifest
    if m.format != "onnx":
        raise ConfigError(f"{art.path}: is format '{m.format}'; {why} — run `edgeopt export` first")
    if m.model.precision != "fp32":
        raise ConfigError(f"{art.path}: is already {m.model.precision}; quantize the fp32 export instead")


def dynamic_options(target, per_channel: bool) -> dict:
    """quantize_dynamic's keyword arguments for ``target`` (the int8 format its hardware wants)."""
    import onnx
    from onnxruntime.quantization import QuantType

    q = target.quantization
    return dict(weight_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[q.weight_type], per_channel=per_channel,
                reduce_range=target.reduce_range(),
                # fused contrib ops (Attention...) have weights without inferred types: say they are float
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": q.weight_symmetric})


def exclusions(graph_path: Path, cfg: QuantizeConfig) -> Optional[list[str]]:
    """Check ``exclude_nodes`` / ``exclude_op_types`` against the graph about to be quantized (after
    ONNX Runtime's pre-pass) and return the op types to quantize (None: ONNX Runtime's default set).
    An unknown name is a ConfigError naming it, with the closest names in the graph."""
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    if not cfg.exclude_nodes and not cfg.exclude_op_types and not cfg.per_channel_nodes:
        return None
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    quantizable = sorted(IntegerOpsRegistry if cfg.ptq == "dynamic" else QDQRegistry)
    present = {n.op_type for n in graph.node}
    names = {n.name for n in graph.node if n.name}
    for option, listed in (("--exclude-nodes", cfg.exclude_nodes), ("per_channel_nodes", cfg.per_channel_nodes)):
        _known_nodes(graph, listed, names, quantizable, option)
    bad = [t for t in cfg.exclude_op_types if t not in quantizable]
    if bad:
        raise ConfigError(f"--exclude-op-types {', '.join(bad)}: not an op type {cfg.ptq} quantization quantizes; "
                          f"choose from {', '.join(t for t in quantizable if t in present) or ', '.join(quantizable)}")
    if not cfg.exclude_op_types:
        return None
    return [t for t in quantizable if t not in cfg.exclude_op_types]


def _known_nodes(graph, listed: list[str], names: set[str], quantizable: list[str], option: str) -> None:
    import difflib

    unknown = [n for n in listed if n not in names]
    if unknown:
        candidates = sorted(n.name for n in graph.node if n.name and n.op_type in quantizable)
        hints = []
        for n in unknown[:3]:
            close = difflib.get_close_matches(n, candidates, n=3, cutoff=0.5)
            hints.append(f"'{n}'" + (f" (closest: {', '.join(close)})" if close else ""))
        some = "" if any("closest" in h for h in hints) else f"; quantizable nodes are e.g. {', '.join(candidates[:3])}"
        raise ConfigError(f"{option}: no node named {'; '.join(hints)} in the graph being quantized{some}")


def _pre_process(src: Path, dst: Path, external: bool) -> None:
    """ONNX Runtime's recommended pre-pass: shape inference and graph cleanup before quantizing.

    It runs in a child process whose working directory is a private folder: when ONNX Runtime's
    symbolic shape inference gives up, it saves ``sym_shape_infer_temp.onnx`` and its external
    data into the current directory, which is the user's (and changing this process's directory
    would break callers on other threads)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    work = dst.parent / ".pre-process"
    work.mkdir()
    try:
        code = "import sys; from edgeopt.stages.quantize import pre_process_here as f; f(sys.argv[1], sys.argv[2], sys.argv[3] == '1')"
        proc = subprocess.run([sys.executable, "-c", code, str(src), str(dst), "1" if external else "0"], cwd=work,
                              capture_output=True, text=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise StageError(f"ONNX Runtime's quantization pre-processing failed ({tail[-1][:300] if tail else proc.returncode})")


def pre_process_here(src: str, dst: str, external: bool) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    kw = dict(save_as_external_data=external, all_tensors_to_one_file=True, external_data_location=Path(dst).name + ".data")
    try:
        quant_pre_process(src, dst, **kw)
    except Exception as e:  # symbolic shape inference does not know every contrib op
        log.info("quant_pre_process with symbolic shapes failed (%s); retrying without", e)
        quant_pre_process(src, dst, skip_symbolic_shape=True, **kw)


class _Reader:
    """CalibrationDataReader over preprocessed samples, one at a time: at their real, unpadded lengths,
    or all padded to ``seq_len`` (ONNX Runtime's histogram calibrators stack every sample's tensors,
    so entropy and percentile need one shape)."""

    def __init__(self, pre, samples, seq_len: Optional[int] = None):
        from ..progress import progress

        self.pre, self.samples, self.i, self.seq_len = pre, samples, 0, seq_len
        self._bar = progress("calibrating", len(samples))
        self._advance = self._bar.__enter__()

    def get_next(self):
        if self.i >= len(self.samples):
            self._bar.__exit__(None, None, None)
            return None
        feeds = self.pre(self.samples[self.i : self.i + 1], seq_len=self.seq_len)
        self.i += 1
        self._advance(1)
        return feeds

    def rewind(self):
        self.i = 0


def _one_length(pre, samples) -> Optional[int]:
    """The longest tokenized length of text samples (None for images: they have one shape already)."""
    if pre.kind != "text":
        return None
    return int(pre(samples)["input_ids"].shape[1])


def _copy_preprocessing(parent: Artifact, tmp: Path) -> None:
    pre = parent.manifest.io.preprocessing
    if pre is not None and getattr(pre, "tokenizer", None):
        shutil.copytree(parent.path / pre.tokenizer, tmp / pre.tokenizer, dirs_exist_ok=True)


def _measure(parent: Artifact, child: Artifact, cfg: QuantizeConfig, pre, sample_dataset) -> dict:
    """Accuracy (labelled eval data) and fidelity (agreement with the fp32 parent)."""
    from ..data import load_dataset
    from ..metrics import predict, quality
    from ..runtime import load_runtime

    src = cfg.eval_data or cfg.calib
    data = load_dataset(src, kind=pre.kind) if src else sample_dataset(parent, 32)
    data = data.take(cfg.eval_samples)
    ref = predict(load_runtime(parent), pre, data.samples, batch_size=8)[0]
    got = predict(load_runtime(child), pre, data.samples, batch_size=8)[0]
    labels = data.label_indices(parent.manifest.labels) if (data.labels is not None and parent.manifest.task.endswith("classification")) else None
    q = quality(parent.manifest.task, got, labels, ref)
    rec = {"eval": {"data": data.source, **q}}
    if labels is not None:
        base = quality(parent.manifest.task, ref, labels)["accuracy"]
        rec["eval"]["parent_accuracy"] = base
        drop = (base - q["accuracy"]) * 100
        rec["eval"]["accuracy_drop_points"] = drop
        if cfg.max_accuracy_drop is not None and drop > cfg.max_accuracy_drop:
            raise ValidationError(
                f"int8 accuracy {q['accuracy']:.4f} is {drop:.2f} points below fp32 {base:.4f} on {data.source} "
                f"(limit {cfg.max_accuracy_drop}); try --ptq static with more --calib data, --method entropy or --per-channel")
    return rec
