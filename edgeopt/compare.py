"""Compare two artifacts of any formats on the same real inputs: per-output error, top-1 agreement or
cosine, pass/fail against atol/rtol; optionally tensor by tensor (``per_layer``) to find where they part.

Both run through their format's runtime (``edgeopt.runtime.load_runtime``), so a new format needs
nothing here; A's preprocessing prepares every batch once and both get the same feeds. The result is
a plain pydantic model, so a stage (e.g. a TensorRT engine build) can record it in its manifest.

``edgeopt.compare(...)`` is the public function, but once this module is imported Python binds
``edgeopt.compare`` to the module itself; calling the module runs the function (as ``edgeopt.bench``
does), so both spellings work whatever was imported first.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np
from pydantic import BaseModel, Field, field_validator

from .artifact import Artifact, ImagePreprocessing, load_artifact
from .errors import ConfigError, InputError, MissingDependencyError, StageError, ValidationError
from .stages.registry import StageConfig

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime

WORST_LAYERS = 5  # how many of the largest per-layer errors a result lists
FLOAT_TYPES = {"tensor(float)", "tensor(double)", "tensor(float16)"}


class CompareConfig(StageConfig):
    """What to compare on and how strictly (allclose: |b - a| <= atol + rtol * |a|, as every check)."""

    data: Optional[str] = None  # dataset reference (.jsonl, .npz, sklearn:digits); None: sample_dataset(A)
    samples: int = Field(16, ge=1)
    batch_size: int = Field(8, ge=1)
    atol: float = Field(1e-3, ge=0)
    rtol: float = Field(1e-3, ge=0)
    # Mark every float intermediate tensor of both graphs as an output and compare those present in
    # both, on the first batch only: a graph with every tensor kept alive can need many times the
    # memory of a normal run (activations of every layer at once).
    per_layer: bool = False
    providers_a: Optional[list[str]] = None  # ONNX Runtime execution providers (onnx artifacts only)
    providers_b: Optional[list[str]] = None
    threads: Optional[int] = Field(None, ge=1)

    @field_validator("providers_a", "providers_b")
    @classmethod
    def _some(cls, v):
        if v is not None and not v:
            raise ValueError("give at least one provider name, e.g. CPUExecutionProvider")
        return v


class ArtifactRef(BaseModel):
    path: str
    format: str
    precision: str
    providers: Optional[list[str]] = None  # the providers its ONNX Runtime session actually runs on


class OutputDiff(BaseModel):
    name: str
    shape: list[int]  # A's
    shape_b: Optional[list[int]] = None  # set only when B's shape differs (then no errors are computed)
    max_abs_err: Optional[float] = None
    max_rel_err: Optional[float] = None
    median_abs_err: Optional[float] = None
    within_tolerance: bool
    top1_agreement: Optional[float] = None  # classification outputs: argmax(B) == argmax(A)
    cosine_mean: Optional[float] = None  # per sample, of the flattened output
    cosine_min: Optional[float] = None


class LayerDiff(BaseModel):
    name: str
    node: Optional[str] = None  # the node that produces it (from whichever of A and B is an ONNX graph)
    op_type: Optional[str] = None
    max_abs_err: float
    max_rel_err: float
    within_tolerance: bool


class PerLayerReport(BaseModel):
    samples: int  # the first batch only
    compared: int  # tensors of the same name and shape in both
    only_in_a: int
    only_in_b: int
    shape_mismatch: list[str] = Field(default_factory=list)  # same name, different shape: not compared
    first_divergent: Optional[LayerDiff] = None  # first beyond tolerance in A's topological order
    worst: list[LayerDiff] = Field(default_factory=list)  # largest max abs error first


class CompareResult(BaseModel):
    config: CompareConfig
    a: ArtifactRef
    b: ArtifactRef
    task: str
    data: str
    samples: int
    outputs: list[OutputDiff]
    per_layer: Optional[PerLayerReport] = None
    passed: bool
    failures: list[str] = Field(default_factory=list)  # one per output beyond tolerance

    def worst_output(self) -> Optional[OutputDiff]:
        """The failing output with the largest error (a shape mismatch first); None when all pass."""
        bad = [o for o in self.outputs if not o.within_tolerance]
        return max(bad, key=lambda o: np.inf if o.max_abs_err is None else o.max_abs_err) if bad else None

    def raise_if_failed(self) -> None:
        """ValidationError (exit 1) naming the worst output and its error, and where the graphs part."""
        worst = self.worst_output()
        if worst is None:
            return
        if worst.shape_b is not None:
            what = f"shape {worst.shape_b} != {worst.shape}"
        else:
            what = (f"max abs err {worst.max_abs_err:.3g}, max rel err {worst.max_rel_err:.3g} "
                    f"(atol {self.config.atol:g}, rtol {self.config.rtol:g})")
        bad = sum(not o.within_tolerance for o in self.outputs)
        more = f"; {bad} of {len(self.outputs)} outputs beyond tolerance" if bad > 1 else ""
        first = self.per_layer.first_divergent if self.per_layer else None
        where = (f"; first divergent tensor '{first.name}' ({first.op_type} node '{first.node}', max abs err "
                 f"{first.max_abs_err:.3g})" if first else "")
        raise ValidationError(f"{self.b.path} disagrees with {self.a.path} on {self.samples} samples from {self.data}: "
                              f"output '{worst.name}' {what}{more}{where}; loosen --atol/--rtol if that is close enough")


def compare(a: Union[Artifact, str, Path], b: Union[Artifact, str, Path],
            config: Optional[CompareConfig] = None) -> CompareResult:
    """Run A and B on the same inputs (A's preprocessing) and measure how far B's outputs are from A's.

    Returns the result whether or not it passes; ``result.raise_if_failed()`` turns a failure into
    one ValidationError. Bad pairs (other task, IO names or preprocessing), unknown providers and
    ``per_layer`` on formats without graphs are ConfigErrors raised before anything runs.
    """
    from .data import load_dataset
    from .metrics import numeric_agreement, quality, sample_dataset
    from .models.preprocess import Preprocessor
    from .runtime import load_runtime

    cfg = config or CompareConfig()
    art_a = a if isinstance(a, Artifact) else load_artifact(a)
    art_b = b if isinstance(b, Artifact) else load_artifact(b)
    _check_pair(art_a, art_b)
    _check_providers(art_a, cfg.providers_a, "a")
    _check_providers(art_b, cfg.providers_b, "b")
    if cfg.per_layer:
        for which, art in (("A", art_a), ("B", art_b)):
            _layer_fn(art, which)
            if art.manifest.format == "onnx":
                _onnx_modules()  # a missing onnx package is one line now, not after the whole comparison

    pre = Preprocessor(art_a)
    data = load_dataset(cfg.data, kind=pre.kind).take(cfg.samples) if cfg.data else sample_dataset(art_a, cfg.samples)
    fixed_batch = any(t.shape and t.shape[0] == 1 for art in (art_a, art_b) for t in art.manifest.io.inputs)
    batch = 1 if fixed_batch else cfg.batch_size  # exported with --no-batch-axis
    rt_a = load_runtime(art_a, threads=cfg.threads, providers=cfg.providers_a)
    rt_b = load_runtime(art_b, threads=cfg.threads, providers=cfg.providers_b)
    ref_a = _ref(art_a, rt_a, cfg.providers_a, "a")
    ref_b = _ref(art_b, rt_b, cfg.providers_b, "b")

    names = [t.name for t in art_a.manifest.io.outputs]
    got_a: dict[str, list[np.ndarray]] = {n: [] for n in names}
    got_b: dict[str, list[np.ndarray]] = {n: [] for n in names}
    first_feeds = None
    for i in range(0, len(data), batch):
        feeds = pre(data.samples[i: i + batch])  # once: both models see exactly the same tensors
        if first_feeds is None:
            first_feeds = feeds
        for rt, into in ((rt_a, got_a), (rt_b, got_b)):
            for name, value in zip(rt.output_names, rt.run(feeds)):
                into[name].append(np.asarray(value))
    out_a = [np.concatenate(got_a[n], axis=0) for n in names]
    out_b = [np.concatenate(got_b[n], axis=0) for n in names]

    record, failures = numeric_agreement(names, out_a, out_b, cfg.atol, cfg.rtol)
    outputs = []
    for name, ra, rb in zip(names, out_a, out_b):
        rec = record[name]
        diff = OutputDiff(name=name, shape=list(ra.shape), within_tolerance=rec.get("within_tolerance", False))
        if "shape_mismatch" in rec:
            diff.shape_b = list(rb.shape)
        else:
            abs_err = np.abs(ra.astype(np.float64) - rb.astype(np.float64))
            q = quality(art_a.manifest.task if ra.ndim == 2 else "", rb, ref=ra)  # top-1 only for (N, classes)
            diff = diff.model_copy(update={
                "max_abs_err": rec["max_abs_err"], "max_rel_err": rec["max_rel_err"],
                "median_abs_err": float(np.median(abs_err)) if abs_err.size else 0.0,
                "top1_agreement": q.get("top1_agreement"), "cosine_mean": q.get("cosine_mean"),
                "cosine_min": q.get("cosine_min")})
        outputs.append(diff)

    per_layer = None
    if cfg.per_layer:
        per_layer = compare_layers(art_a, art_b, first_feeds, cfg)
    return CompareResult(config=cfg, a=ref_a, b=ref_b, task=art_a.manifest.task, data=data.source, samples=len(data),
                         outputs=outputs, per_layer=per_layer, passed=not failures, failures=failures)


# -- checks before anything runs --------------------------------------------------------------------

def _check_pair(a: Artifact, b: Artifact) -> None:
    """One ConfigError naming every difference that makes the two incomparable on the same inputs."""
    ma, mb = a.manifest, b.manifest
    diffs = []
    if ma.task != mb.task:
        diffs.append(f"task {ma.task} vs {mb.task}")
    for kind, ta, tb in (("input", ma.io.inputs, mb.io.inputs), ("output", ma.io.outputs, mb.io.outputs)):
        na, nb = sorted(t.name for t in ta), sorted(t.name for t in tb)
        if na != nb:
            diffs.append(f"{kind} names {', '.join(na)} vs {', '.join(nb)}")
    pa, pb = ma.io.preprocessing, mb.io.preprocessing
    ka, kb = (p.kind if p is not None else "none" for p in (pa, pb))
    if ka != kb:
        diffs.append(f"preprocessing {ka} vs {kb}")
    elif (isinstance(pa, ImagePreprocessing) and isinstance(pb, ImagePreprocessing)
          and (pa.size, pa.channels) != (pb.size, pb.channels)):  # A's tensors would not fit B
        diffs.append(f"image input {pa.channels}x{pa.size[0]}x{pa.size[1]} vs {pb.channels}x{pb.size[0]}x{pb.size[1]}")
    if diffs:
        raise ConfigError(f"{a.path} and {b.path} are not the same model's variants ({'; '.join(diffs)}); "
                          "compare an artifact with one derived from it (export, quantize, engine)")
    if pa is None:
        raise ConfigError(f"{a.path} records no preprocessing, so there are no real inputs to feed it; "
                          "compare artifacts of a text or image model")


def _check_providers(art: Artifact, providers: Optional[list[str]], which: str) -> None:
    if not providers:
        return
    if art.manifest.format != "onnx":
        raise ConfigError(f"--provider-{which}: execution providers apply to onnx artifacts (ONNX Runtime); "
                          f"{art.path} is a {art.manifest.format} artifact")
    import onnxruntime as ort

    available = ort.get_available_providers()
    unknown = [p for p in providers if p not in available]
    if unknown:
        gpu = " (CUDA / TensorRT providers come with onnxruntime-gpu: pip install 'edgeopt[gpu]')" if any(
            p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in unknown) else ""
        raise ConfigError(f"--provider-{which} {unknown[0]}: not available in this onnxruntime {ort.__version__}; "
                          f"available: {', '.join(available)}{gpu}")


def _ref(art: Artifact, rt: "Runtime", requested: Optional[list[str]], which: str) -> ArtifactRef:
    """What ran, checked: ONNX Runtime falls back to the CPU when a provider cannot start (missing CUDA
    or TensorRT libraries), and a comparison of CPU against CPU must not pass as one against the GPU."""
    get_providers = getattr(getattr(rt, "session", None), "get_providers", None)  # ONNX Runtime sessions only
    active = list(get_providers()) if get_providers is not None else None
    if requested and active is not None:
        dropped = [p for p in requested if p not in active]
        if dropped:
            raise StageError(f"--provider-{which} {dropped[0]} did not start for {art.path} (ONNX Runtime runs it on "
                             f"{', '.join(active)}); see ONNX Runtime's log for the missing library")
    return ArtifactRef(path=str(art.path), format=art.manifest.format, precision=art.manifest.model.precision,
                       providers=active)


# -- per layer ----------------------------------------------------------------------------------------

LayerOutputs = Callable[[Artifact, dict[str, np.ndarray], Optional[list[str]]], dict[str, np.ndarray]]


def layer_outputs(artifact: Artifact, feeds: dict[str, np.ndarray],
                  providers: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """Every float intermediate tensor of one run, name -> value, in topological order.

    The per-layer protocol: one function per format in ``LAYER_OUTPUTS``; a format without one
    (hf, torch: no graph whose tensor names other formats share) is a ConfigError."""
    return _layer_fn(artifact)(artifact, feeds, providers)


def _layer_fn(artifact: Artifact, which: str = "") -> LayerOutputs:
    fmt = artifact.manifest.format
    if fmt not in LAYER_OUTPUTS:
        label = f"{which} ({artifact.path})" if which else str(artifact.path)
        raise ConfigError(f"--per-layer compares ONNX graphs and TensorRT engines; {label} is a {fmt} artifact: "
                          f"export it first (edgeopt export {artifact.path} -o DIR)")
    return LAYER_OUTPUTS[fmt]


def _onnx_layer_outputs(artifact: Artifact, feeds: dict[str, np.ndarray],
                        providers: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """Polygraphy's ``--onnx-outputs mark all``: a copy of the graph with every node output added as a
    graph output, run with graph optimizations off so that every tensor still exists. The artifact
    is never written to."""
    onnx, ort = _onnx_modules()
    path = artifact.path / artifact.manifest.model.file
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    constant = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    names = list(dict.fromkeys(o for n in graph.node if n.op_type != "Constant" for o in n.output
                               if o and o not in constant))
    present = {o.name for o in graph.output}
    # No type given: ONNX Runtime infers it, also for com.microsoft ops that onnx's inference skips.
    graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # fused away = not comparable
    so.log_severity_level = 3
    return _run_marked(model, path, so, providers, feeds, names)


def _run_marked(model, path: Path, so, providers, feeds, names: list[str]) -> dict[str, np.ndarray]:
    onnx, ort = _onnx_modules()
    locations = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    providers = providers or ["CPUExecutionProvider"]
    if not locations:
        return _run_session(ort, model.SerializeToString(), so, providers, feeds, names, path)
    # External data (model.onnx.data): ONNX Runtime reads it in place from the artifact's folder when
    # told where it is; it refuses data reached through a symlink from another folder.
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    try:
        return _run_session(ort, model.SerializeToString(), so, providers, feeds, names, path)
    except InputError:
        return _run_in_private_dir(model, path, locations, providers, feeds, names)


def _run_in_private_dir(model, path: Path, locations: set[str], providers, feeds, names) -> dict[str, np.ndarray]:
    """An ONNX Runtime that cannot read external data beside an in-memory graph: the graph goes into a
    private temporary folder with a hard link to each data file (a copy across file systems)."""
    onnx, ort = _onnx_modules()
    with tempfile.TemporaryDirectory(prefix="edgeopt-compare-") as tmp:
        onnx.save_model(model, os.path.join(tmp, path.name))
        for loc in locations:
            src, dst = path.parent / loc, Path(tmp) / loc
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        return _run_session(ort, os.path.join(tmp, path.name), so, providers, feeds, names, path)


def _run_session(ort, model, so, providers, feeds, names, path: Path) -> dict[str, np.ndarray]:
    from .runtime.onnxruntime import load_error

    try:
        session = ort.InferenceSession(model, so, providers=providers)
    except Exception as e:
        raise load_error(path, e) from e
    floats = {o.name for o in session.get_outputs() if o.type in FLOAT_TYPES}
    wanted = [n for n in names if n in floats]
    values = session.run(wanted, {i.name: feeds[i.name] for i in session.get_inputs()})
    return dict(zip(wanted, values))


def _onnx_modules():
    from ._optional import require

    require("train", purpose="--per-layer on ONNX graphs", modules=("onnx",))
    import onnx
    import onnxruntime as ort

    return onnx, ort


def _trt_layer_outputs(artifact: Artifact, feeds: dict[str, np.ndarray],
                       providers: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """TensorRT engines mark their own layers (``edgeopt.tensorrt.layer_outputs``)."""
    try:
        from importlib import import_module

        module = import_module("edgeopt.tensorrt")
    except ModuleNotFoundError as e:
        if e.name == "tensorrt":
            raise MissingDependencyError("tensorrt", "tensorrt", purpose="--per-layer on TensorRT engines") from e
        if e.name != "edgeopt.tensorrt":
            raise
        module = None
    fn = getattr(module, "layer_outputs", None)
    if fn is None:
        raise ConfigError(f"--per-layer on TensorRT engines ({artifact.path}) needs edgeopt.tensorrt.layer_outputs, "
                          "which this edgeopt does not have; compare the engine's ONNX parent per layer instead")
    return fn(artifact, feeds)


LAYER_OUTPUTS: dict[str, LayerOutputs] = {"onnx": _onnx_layer_outputs, "trt": _trt_layer_outputs}


def _producers(artifact: Artifact) -> dict[str, tuple[str, str]]:
    """Tensor name -> (node name, op type), for an ONNX graph; {} for other formats."""
    if artifact.manifest.format != "onnx":
        return {}
    onnx, _ = _onnx_modules()
    model = onnx.load(str(artifact.path / artifact.manifest.model.file), load_external_data=False)
    return {o: (n.name, n.op_type) for n in model.graph.node for o in n.output if o}


def compare_layers(a: Artifact, b: Artifact, feeds: dict[str, np.ndarray], cfg: CompareConfig) -> PerLayerReport:
    """Tensors present in both runs, in A's topological order: the first beyond tolerance and the worst."""
    from .metrics import numeric_agreement

    la = layer_outputs(a, feeds, cfg.providers_a)
    lb = layer_outputs(b, feeds, cfg.providers_b)
    common = [n for n in la if n in lb and np.asarray(la[n]).dtype.kind == "f" and np.asarray(lb[n]).dtype.kind == "f"]
    same = [n for n in common if np.shape(la[n]) == np.shape(lb[n])]
    record, _ = numeric_agreement(same, [la[n] for n in same], [lb[n] for n in same], cfg.atol, cfg.rtol)
    producers = {**_producers(b), **_producers(a)}
    diffs = [LayerDiff(name=n, node=producers.get(n, (None, None))[0], op_type=producers.get(n, (None, None))[1],
                       max_abs_err=record[n]["max_abs_err"], max_rel_err=record[n]["max_rel_err"],
                       within_tolerance=record[n]["within_tolerance"]) for n in same]
    return PerLayerReport(
        samples=len(next(iter(feeds.values()))), compared=len(same), only_in_a=len(set(la) - set(lb)),
        only_in_b=len(set(lb) - set(la)), shape_mismatch=[n for n in common if n not in same],
        first_divergent=next((d for d in diffs if not d.within_tolerance), None),
        worst=sorted(diffs, key=lambda d: -d.max_abs_err if np.isfinite(d.max_abs_err) else -np.inf)[:WORST_LAYERS])


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
