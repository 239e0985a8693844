"""`edgeopt tune`: search ONNX Runtime int8 variants of an fp32 model for the fastest one within an
accuracy (or fidelity) budget.

Each variant is a quantize configuration (dynamic or static Q/DQ, per-channel, per-tensor or mixed
weight scales, op types and nodes kept in float, calibration method) plus graph rewrites
(``rewrites.py``) and ONNX Runtime session options; or, where OpenVINO is installed, the unchanged
fp32 graph under OpenVINO (f32, and bf16 where the CPU has it). Every variant is built in a private temporary folder, measured on the data's real inputs
at the target's threads against the fp32 parent in the same interleaved runs, and its result
cached (a re-run resumes where it stopped). The variants that nothing beats on both speed and
quality form the Pareto front; the fastest variant within the budget is rebuilt by the quantize
code as the output artifact, with every variant in its manifest and the front in its report.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from ..artifact import Artifact, canonical_json, load_artifact
from ..errors import ConfigError, InputError, StageError, ValidationError
from ..stages.registry import StageConfig, stage

log = logging.getLogger("edgeopt.tune")

FLOAT_NODE_STEPS = (1, 2, 4, 8, 16)
PER_CHANNEL_OPS = {"MatMul", "Gemm", "Attention", "Conv"}  # ops whose weights take per-channel scales
TIE = 0.03  # speeds this close are within the timing noise of a shared machine
# ONNX Runtime session options worth trying on a CPU target (each on the best variant so far)
RUNTIME_OPTIONS: tuple[dict[str, str], ...] = ({"session.dynamic_block_base": "4"},
                                               {"session.intra_op.allow_spinning": "0"})


class TuneConfig(StageConfig):
    kind: Literal["tune"] = "tune"
    data: str  # real inputs: latency at their lengths; labels: accuracy
    calib: Optional[str] = None  # static Q/DQ calibration data (default: data)
    max_accuracy_drop: Optional[float] = Field(None, ge=0)  # points of accuracy vs fp32 (labelled data)
    min_agreement: Optional[float] = Field(None, gt=0, le=1)  # top-1 agreement (classifier) / cosine min
    target: Optional[str] = None  # None: the host's CPU target
    budget_minutes: float = Field(20.0, gt=0)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    seq_len: Union[int, Literal["auto"]] = "auto"  # auto: each batch padded to its longest real input
    threads: Optional[int] = Field(None, ge=1)  # default: the target's threads
    eval_samples: Optional[int] = Field(512, ge=1)
    calib_samples: int = Field(128, ge=1)
    rounds: int = Field(5, ge=1)  # interleaved timing rounds per variant
    max_float_nodes: int = Field(8, ge=0)
    static: bool = True  # try static Q/DQ variants too
    openvino: bool = True  # try OpenVINO on the fp32 graph too (where installed and the target is this CPU)
    cache_dir: Optional[str] = None  # default $EDGEOPT_CACHE_DIR or ~/.cache/edgeopt; "" turns caching off
    # time variants on a device: its Docker engine (ssh://USER@HOST), in the target's serving image
    docker_host: Optional[str] = None
    image: Optional[str] = None  # that image, or a bundle (default: package the fp32 model for the target)
    base_image: Optional[str] = None  # the base image when tune packages it

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v):
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be positive integers, e.g. 1,8")
        return sorted(set(v))

    @field_validator("seq_len")
    @classmethod
    def _seq(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("give 'auto' or a positive integer")
        return v

    @field_validator("budget_minutes")
    @classmethod
    def _budget(cls, v):
        if v != v or v == float("inf"):
            raise ValueError("give a finite number of minutes, e.g. 20")
        return v

    @model_validator(mode="after")
    def _one_budget(self):
        if self.max_accuracy_drop is not None and self.min_agreement is not None:
            raise ValueError("give one budget: --max-accuracy-drop (points of accuracy, labelled data) or "
                             "--min-agreement (agreement with fp32)")
        return self


class Variant(BaseModel):
    """One point of the search: how it is quantized and the session options it runs with."""

    ptq: Literal["fp32", "dynamic", "static", "float"] = "dynamic"  # fp32: the reference; float: not quantized
    per_channel: bool = True
    per_channel_nodes: list[str] = Field(default_factory=list)
    method: Optional[Literal["minmax", "entropy", "percentile"]] = None
    exclude_op_types: list[str] = Field(default_factory=list)
    exclude_nodes: list[str] = Field(default_factory=list)
    rewrites: list[str] = Field(default_factory=list)  # graph rewrites after quantization (tuning/rewrites.py)
    session_config: dict[str, str] = Field(default_factory=dict)  # includes what the rewrites need
    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    openvino_config: dict[str, str] = Field(default_factory=dict)  # OpenVINO CPU properties

    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.model_dump()).encode()).hexdigest()[:16]

    def label(self) -> str:
        if self.ptq == "fp32":
            return "fp32 (reference)"
        if self.runtime == "openvino":
            hint = self.openvino_config.get("INFERENCE_PRECISION_HINT", "f32")
            return f"OpenVINO {hint}" + (" (fp32 graph)" if self.ptq == "float" else f", {self.ptq}")
        parts = [self.ptq + (f" {self.method}" if self.method else "")]
        if self.per_channel_nodes:
            parts.append(f"per-tensor, {len(self.per_channel_nodes)} per-channel")
        else:
            parts.append("per-channel" if self.per_channel else "per-tensor")
        if self.exclude_op_types:
            parts.append("float " + "+".join(self.exclude_op_types))
        if self.exclude_nodes:
            parts.append(f"{len(self.exclude_nodes)} float node{'s' * (len(self.exclude_nodes) > 1)}")
        from .rewrites import REWRITES, session_config_for

        parts += [REWRITES[r].label for r in self.rewrites]
        implied = session_config_for(self.rewrites)
        parts += [f"{k.split('.')[-1]}={v}" for k, v in self.session_config.items() if implied.get(k) != v]
        return ", ".join(parts)

    def quantize_config(self, cfg: TuneConfig, target: str):
        from ..stages.quantize import QuantizeConfig

        return QuantizeConfig(ptq=self.ptq, per_channel=self.per_channel, per_channel_nodes=self.per_channel_nodes,
                              method=self.method or "minmax", calib=(cfg.calib or cfg.data) if self.ptq == "static" else None,
                              calib_samples=cfg.calib_samples, target=target, eval_data=cfg.data,
                              eval_samples=cfg.eval_samples, exclude_nodes=self.exclude_nodes,
                              exclude_op_types=self.exclude_op_types)


class Trial(BaseModel):
    variant: Variant
    label: str
    latency: dict[int, dict[str, Any]] = Field(default_factory=dict)  # batch size -> ms, ref_ms, speedup, seq
    speedup: float = 1.0  # geometric mean over batch sizes, vs fp32 in the same runs
    quality: dict[str, float] = Field(default_factory=dict)
    accuracy_drop_points: Optional[float] = None
    meets_budget: bool = False
    on_front: bool = False
    size_bytes: Optional[int] = None
    seconds: float = 0.0  # building and measuring it
    cached: bool = False
    error: Optional[str] = None  # a variant ONNX Runtime could not build or run


class TuneResult(BaseModel):
    artifact: Optional[str]  # None: no variant met the budget; nothing was written
    budget: str
    metric: str  # what the quality axis is: accuracy or agreement
    chosen: Optional[Trial]
    closest: Optional[Trial]  # without a winner: the variant nearest the budget
    trials: list[Trial]
    stopped: Optional[str] = None  # why the search stopped early (budget spent)
    warnings: list[str] = Field(default_factory=list)
    seconds: float
    machine: dict
    report: Optional[str] = None


def _cache_root(cfg: TuneConfig) -> Optional[Path]:
    if cfg.cache_dir == "":
        return None
    base = cfg.cache_dir or os.environ.get("EDGEOPT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeopt"
    return Path(base).expanduser() / "tune"


def _fingerprint(spec: str) -> str:
    """A dataset reference's content, for the cache key (a file by its bytes; a spec as written)."""
    from ..artifact import sha256_file

    p = Path(spec).expanduser()
    return sha256_file(p) if p.is_file() else spec


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return ",".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in have)
    except OSError:
        pass
    return ""


def _digits(x: float, bound: Optional[float]) -> str:
    """``x`` with 4 decimals, more where 4 would print it equal to the bound it is compared with."""
    for d in range(4, 10):
        if bound is None or round(x, d) != round(bound, d):
            return f"{x:.{d}f}"
    return f"{x:.10f}"


class _Cache:
    """One JSON file per measured variant under a folder keyed by everything the measurement depends
    on (model, data, target, threads, lengths, this machine and the ONNX Runtime version)."""

    def __init__(self, root: Optional[Path], context: dict):
        self.dir = root / hashlib.sha256(canonical_json(context).encode()).hexdigest()[:20] if root else None

    def get(self, name: str) -> Optional[dict]:
        if self.dir is None:
            return None
        try:
            return json.loads((self.dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, name: str, value: dict) -> None:
        if self.dir is None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(value))
            os.replace(tmp, self.dir / f"{name}.json")
        except OSError as e:  # a read-only home: tune still works, it only cannot resume
            log.warning("cannot write the tune cache in %s (%s)", self.dir, e)
            self.dir = None


@stage("tune")
def tune(model: Union[Artifact, str, Path], out: Union[str, Path], config: TuneConfig,
         on_progress: Callable[[str], None] = lambda s: log.info(s)) -> TuneResult:
    """Search int8 variants of ``model`` (an fp32 ONNX artifact; a Hugging Face / torch one is exported
    first) and write the fastest one within the budget to ``out``. Without a variant within the
    budget nothing is written and a ValidationError names the closest."""
    from ..outputs import check_output

    cfg = config
    parent = model if isinstance(model, Artifact) else load_artifact(model)
    check_output(out, parent, cfg)
    with tempfile.TemporaryDirectory(prefix="edgeopt-tune-") as td:
        work = Path(td)
        if parent.manifest.format != "onnx":
            from ..stages.export import ExportConfig, export

            on_progress(f"exporting {parent.path} to ONNX first")
            parent = export(parent, work / "fp32", ExportConfig(target=cfg.target))
        return _Search(parent, cfg, work, on_progress).run(out)


class _Search:
    def __init__(self, parent: Artifact, cfg: TuneConfig, work: Path, on_progress: Callable[[str], None]):
        from ..bench.core import machine_info
        from ..data import load_dataset
        from ..models.preprocess import Preprocessor
        from ..stages.quantize import require_fp32_onnx
        from ..targets import get_target

        self.parent, self.cfg, self.work, self.say = parent, cfg, work, on_progress
        self.t0 = time.monotonic()
        require_fp32_onnx(parent, "tune quantizes ONNX graphs")
        self.target = get_target(cfg.target)
        if self.target.runtime == "tensorrt":
            raise ConfigError(f"target '{self.target.name}' runs TensorRT: tune searches ONNX Runtime int8 variants "
                              "(CPU targets); for TensorRT use edgeopt quantize --ptq static --target "
                              f"{self.target.name}, then edgeopt engine")
        m = parent.manifest
        self.pre = Preprocessor(parent)
        data = load_dataset(cfg.data, kind=self.pre.kind)
        if len(data) == 0:
            raise InputError(f"{cfg.data}: holds no samples")
        self.data = data.take(cfg.eval_samples)
        classify = m.task.endswith("classification")
        self.labels = None
        if cfg.max_accuracy_drop is not None:
            if not classify:
                raise ConfigError(f"--max-accuracy-drop needs a classifier; {parent.path} is a {m.task} model: "
                                  "bound its fidelity with --min-agreement (minimum cosine similarity to fp32)")
            if data.labels is None:
                raise ConfigError(f"--max-accuracy-drop needs labelled data and {cfg.data} has no labels; "
                                  "use --min-agreement A (top-1 agreement with fp32) instead")
        if classify and data.labels is not None:
            self.labels = self.data.label_indices(m.labels)
        self.max_drop, self.min_agree = cfg.max_accuracy_drop, cfg.min_agreement
        if cfg.image and not cfg.docker_host:
            raise ConfigError("--image is the image variants are timed in on a device: give --docker-host too")
        if self.max_drop is None and self.min_agree is None:  # defaults: 1 point with labels, else 0.98 agreement
            if self.labels is not None:
                self.max_drop = 1.0
            else:
                self.min_agree = 0.98
        self.metric = "accuracy" if self.max_drop is not None else "agreement"
        self.budget = (f"accuracy drop <= {self.max_drop:g} points" if self.max_drop is not None else
                       f"{'top-1 agreement' if classify else 'cosine min'} >= {self.min_agree:g}")
        self.threads = cfg.threads or self.target.threads
        self.machine = {**machine_info(), "cpu_flags": _cpu_flags(), "threads": self.threads, "target": self.target.name}
        if cfg.docker_host:  # latency is measured there (machine["device"]); quality here
            self.machine["docker_host"] = cfg.docker_host
        import onnxruntime

        from ..runtime.openvino import version as openvino_version

        context = {"parent": m.digest(), "data": _fingerprint(cfg.data), "eval_samples": cfg.eval_samples,
                   "calib": _fingerprint(cfg.calib) if cfg.calib else None, "calib_samples": cfg.calib_samples,
                   "target": self.target.model_dump(mode="json"), "threads": self.threads, "batch_sizes": cfg.batch_sizes,
                   "seq_len": cfg.seq_len, "rounds": cfg.rounds, "cpu": self.machine.get("cpu"),
                   "flags": self.machine["cpu_flags"], "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
                   "openvino": openvino_version(),
                   "docker_host": cfg.docker_host, "image": cfg.image}
        from .. import __version__

        context["edgeopt"] = __version__
        self.cache = _Cache(_cache_root(cfg), context)
        self.trials: list[Trial] = []
        self.stopped: Optional[str] = None

    # -- measuring ------------------------------------------------------------------------------

    def _runtime(self, path: Path, session_config: dict[str, str]):
        from ..runtime.onnxruntime import OrtRuntime

        return OrtRuntime(path, threads=self.threads, session_config={**self.target.session_config, **session_config} or None,
                          output_names=[t.name for t in self.parent.manifest.io.outputs])

    def _setup(self) -> None:
        from ..metrics import predict
        from ..stages.quantize import _pre_process
        from .measure import Workload

        m = self.parent.manifest
        self.prepped = self.work / "fp32.onnx"
        _pre_process(self.parent.path / m.model.file, self.prepped, m.model.external_data)
        self.ref_rt = self._runtime(self.parent.path / m.model.file, {})
        self.ref_out = predict(self.ref_rt, self.pre, self.data.samples, batch_size=8)[0]
        self.ref_quality = {}
        if self.labels is not None:
            self.ref_quality["accuracy"] = float((self.ref_out.argmax(-1) == self.labels).mean())
        self.workload = Workload.build(self.pre, self.data.samples, self.cfg.batch_sizes, self.cfg.seq_len)
        self.device = None
        if self.cfg.docker_host:
            from .device import DeviceTimer

            self.device = DeviceTimer(self.parent, self.target, self.cfg.docker_host, self.cfg.data, self.work, self.say,
                                      image=self.cfg.image, base_image=self.cfg.base_image)

    def _measure(self, v: Variant) -> Trial:
        from ..metrics import predict
        from ..stages.quantize import quantize_graph
        from .measure import geomean, quality_of, time_against
        from .rewrites import apply_rewrites

        t0 = time.monotonic()
        folder = self.work / v.key()
        folder.mkdir()
        try:
            path = folder / "model.onnx"
            if v.ptq == "fp32":  # the reference: timed alongside every other variant
                got = self.ref_out
                q = quality_of(self.parent.manifest.task, got, self.ref_out, self.labels)
                return Trial(variant=v, label=v.label(), quality=q, seconds=time.monotonic() - t0,
                             size_bytes=sum(f.stat().st_size for f in self.parent.path.glob(self.parent.manifest.model.file + "*")))
            elif v.ptq == "float":  # the fp32 graph as it is, under another runtime
                path = self.parent.path / self.parent.manifest.model.file
            else:
                quantize_graph(self.prepped, path, v.quantize_config(self.cfg, self.target.name), self.target, self.pre,
                               self.parent.manifest.model.external_data)
                apply_rewrites(path, v.rewrites)
            try:
                if v.runtime == "openvino":
                    from ..runtime.openvino import OpenVinoRuntime

                    rt = OpenVinoRuntime(path, threads=self.threads, config=v.openvino_config,
                                         output_names=[t.name for t in self.parent.manifest.io.outputs])
                else:
                    rt = self._runtime(path, v.session_config)
            except (InputError, StageError) as e:  # this variant's graph: a failed trial, not the user's input
                raise RuntimeError(str(e)) from e
            got = predict(rt, self.pre, self.data.samples, batch_size=8)[0]
            q = quality_of(self.parent.manifest.task, got, self.ref_out, self.labels)
            if self.device is not None:  # on the device, in the target's image
                from .device import variant_artifact

                variant_artifact(self.parent, folder, v.session_config)
                lat = self.device.time(self.parent.path, folder, self.cfg.batch_sizes, self.cfg.seq_len,
                                       runs=max(10, 4 * self.cfg.rounds), threads=self.threads)
                self.machine["device"] = self.device.machine
            else:
                lat = time_against(self.ref_rt, rt, self.workload, self.cfg.rounds)
            size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
        except Exception as e:  # one variant ONNX Runtime cannot build or run does not end the search
            if isinstance(e, (ConfigError, InputError, StageError)):
                raise
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            return Trial(variant=v, label=v.label(), error=msg, seconds=time.monotonic() - t0)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        trial = Trial(variant=v, label=v.label(), latency=lat, speedup=geomean(x["speedup"] for x in lat.values()),
                      quality=q, size_bytes=size, seconds=time.monotonic() - t0)
        if "accuracy" in q and "accuracy" in self.ref_quality:
            trial.accuracy_drop_points = (self.ref_quality["accuracy"] - q["accuracy"]) * 100
        return trial

    def _judge(self, t: Trial) -> None:
        if t.error or t.variant.ptq == "fp32":
            t.meets_budget = False
        elif self.max_drop is not None:
            t.meets_budget = t.accuracy_drop_points is not None and t.accuracy_drop_points <= self.max_drop + 1e-9
        else:
            t.meets_budget = t.quality.get("agreement", 0) >= self.min_agree - 1e-12

    def _try(self, v: Variant) -> Optional[Trial]:
        key = v.key()
        if any(t.variant.key() == key for t in self.trials):
            return None
        cached = self.cache.get(key)
        if cached is not None:
            t = Trial.model_validate(cached)
            t.cached = True
        else:
            if self._out_of_time():
                return None
            t = self._measure(v)
            if t.error is None:
                self.cache.put(key, t.model_dump(mode="json"))
        self._judge(t)
        self.trials.append(t)
        self._report(t)
        return t

    def _out_of_time(self) -> bool:
        if not any(t.variant.ptq != "fp32" and t.error is None for t in self.trials):
            return False  # however small the budget, one int8 variant is measured
        spent = time.monotonic() - self.t0
        measured = [t.seconds for t in self.trials if not t.cached and t.variant.ptq != "fp32"]
        expect = sorted(measured)[len(measured) // 2] if measured else 0.0
        if spent + expect > self.cfg.budget_minutes * 60:
            if self.stopped is None:
                self.stopped = f"the {self.cfg.budget_minutes:g}-minute budget was spent after {len(self.trials)} variants"
                self.say(f"stopping: {self.stopped}")
            return True
        return False

    def _report(self, t: Trial) -> None:
        n = len(self.trials)
        if t.error:
            self.say(f"[{n}] {t.label}: failed ({t.error})")
            return
        q = t.quality
        qual = (f"accuracy {q['accuracy']:.2%}" if self.metric == "accuracy" and "accuracy" in q else
                f"agreement {_digits(q.get('agreement', 1.0), self.min_agree)}")
        mark = "meets the budget" if t.meets_budget else ("reference" if t.variant.ptq == "fp32" else "over the budget")
        self.say(f"[{n}] {t.label}: {t.speedup:.2f}x fp32, {qual} — {mark}"
                 f" ({'cached' if t.cached else f'{t.seconds:.1f} s'})")

    # -- the search -----------------------------------------------------------------------------

    def _best(self, *, within: bool = True, runtime: Optional[str] = None) -> Optional[Trial]:
        """The fastest variant (within the budget; of ``runtime``'s); variants within TIE of it count as
        equally fast (timing noise), and of those the most accurate wins."""
        from .pareto import quality_value

        ok = [t for t in self.trials if t.error is None and t.variant.ptq != "fp32" and (t.meets_budget or not within)
              and runtime in (None, t.variant.runtime)
              and not (t.variant.ptq == "float" and t.speedup <= 1)]  # the fp32 graph, slower: keep the fp32 model
        if not ok:
            return None
        top = max(t.speedup for t in ok)
        return max((t for t in ok if t.speedup >= top * (1 - TIE)), key=lambda t: (quality_value(t, self.metric), t.speedup))

    def _ranking(self) -> list[str]:
        """Nodes most sensitive to per-tensor int8 first (cached like a variant)."""
        cached = self.cache.get("sensitivity")
        if cached is not None:
            return cached["nodes"]
        if self._out_of_time():
            return []
        from ..sensitivity import SensitivityConfig, sensitivity

        self.say("ranking nodes by sensitivity (per-tensor int8, one node at a time)")
        res = sensitivity(self.parent, SensitivityConfig(data=self.cfg.data, samples=min(len(self.data), 64),
                                                        target=self.target.name, per_channel=False, threads=self.threads))
        nodes = [r.node for r in res.nodes if r.error > 0]
        self.cache.put("sensitivity", {"nodes": nodes})
        return nodes

    def _plan(self) -> Iterator[Variant]:
        """Variants in the order they are worth trying. Levers that only buy back quality (weights per
        channel on sensitive nodes, nodes kept in float) are tried on a granularity only when that
        granularity alone misses the budget: otherwise they can only be slower."""
        import onnx
        from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

        from ..stages.quantize import effective_per_channel
        from .rewrites import applicable, session_config_for

        yield Variant(ptq="fp32")
        forced = self.target.quantization.per_channel
        grains = [forced] if forced is not None else [False, True]  # per-tensor is the faster format
        for pc in grains:
            yield Variant(per_channel=pc)
        yield from self._openvino_variants()
        graph = onnx.load(str(self.prepped), load_external_data=False).graph
        present = sorted({n.op_type for n in graph.node if n.op_type in IntegerOpsRegistry})
        if len(present) > 1:  # an op type whose int8 kernel is slower (or less accurate) than float
            for op in present:
                for pc in grains:
                    yield Variant(per_channel=pc, exclude_op_types=[op])
        missed = [pc for pc in grains if not self._met(Variant(per_channel=pc))]
        ranking = self._ranking() if missed and (self.cfg.max_float_nodes or False in missed) else []
        if False in missed and forced is None:  # mixed: per-tensor where it is safe, per-channel where it is not
            kinds = {n.name: n.op_type for n in graph.node}
            weighted = [n for n in ranking if kinds.get(n) in PER_CHANNEL_OPS]
            for k in FLOAT_NODE_STEPS:
                if k < len(weighted):
                    yield Variant(per_channel=False, per_channel_nodes=weighted[:k])
        for k in FLOAT_NODE_STEPS:  # the most sensitive nodes in float
            if k > self.cfg.max_float_nodes or k >= len(ranking):
                break
            for pc in missed:
                yield Variant(per_channel=pc, exclude_nodes=ranking[:k])
        ort_best = lambda: self._best(runtime="onnxruntime")  # noqa: E731  (rewrites and options are ORT's)
        rewrites = applicable(self.prepped)
        if rewrites and ort_best() is not None:  # graph rewrites, on the best variant so far
            best = ort_best().variant
            for name in rewrites:
                yield best.model_copy(update={"rewrites": [*best.rewrites, name], "session_config":
                                              {**best.session_config, **session_config_for([*best.rewrites, name])}})
        if ort_best() is not None:  # session options, on the best variant so far
            best = ort_best()
            for opts in RUNTIME_OPTIONS:
                if all(self.target.session_config.get(k) == v for k, v in opts.items()):
                    continue
                yield best.variant.model_copy(update={"session_config": {**best.variant.session_config, **opts}})
        if self.cfg.static and any(n.op_type in QDQRegistry for n in graph.node):
            for method in ("minmax", "entropy", "percentile"):
                yield Variant(ptq="static", per_channel=effective_per_channel(self.target, True), method=method)

    def _openvino_variants(self) -> list[Variant]:
        """The fp32 graph under OpenVINO, in float32 and, where the CPU runs it natively, bfloat16: a CPU
        runtime other than ONNX Runtime, tried where the artifact will run on this kind of CPU."""
        import platform

        from .._optional import installed

        host = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
        if not self.cfg.openvino or self.cfg.docker_host or self.target.arch != host:
            return []
        if not installed("openvino"):
            self.say("OpenVINO is not installed, so only ONNX Runtime variants are tried "
                     "(pip install 'edgeopt[openvino]' to try it too)")
            return []
        from ..runtime.openvino import PRECISION_HINT, bf16_capable

        hints = ["f32", "bf16"] if bf16_capable() else ["f32"]
        return [Variant(ptq="float", per_channel=False, runtime="openvino", openvino_config={PRECISION_HINT: h})
                for h in hints]

    def _met(self, v: Variant) -> bool:
        key = v.key()
        return any(t.variant.key() == key and t.meets_budget for t in self.trials)

    def run(self, out: Union[str, Path]) -> TuneResult:
        self.say(f"tuning {self.parent.path} for {self.target.name} ({self.threads or 'default'} threads), "
                 f"budget: {self.budget}, {self.cfg.budget_minutes:g} min")
        self._setup()
        for v in self._plan():
            self._try(v)
            if self.stopped:
                break
        from .pareto import front

        ref = next((t for t in self.trials if t.variant.ptq == "fp32"), None)
        timed = [t for t in self.trials if t.latency and t.variant.ptq != "fp32"]
        if ref is not None and timed:  # fp32's times: the median over every variant's interleaved runs
            import numpy as np

            ref.latency = {b: {"ms": float(np.median([t.latency[b]["ref_ms"] for t in timed if b in t.latency])),
                               "ref_ms": float(np.median([t.latency[b]["ref_ms"] for t in timed if b in t.latency])),
                               "speedup": 1.0, "seq": timed[0].latency[b]["seq"]} for b in timed[0].latency}
        ok = [t for t in self.trials if t.error is None]
        for t in front(ok, self.metric):
            t.on_front = True
        chosen = self._best()
        if chosen is None:
            closest = self._closest()
            what = (f"; the closest is {closest.label} ({self._quality_text(closest)})" if closest else "")
            slow = [t.label for t in self.trials if t.meets_budget and t.variant.ptq == "float"]
            if slow:  # the fp32 graph under another runtime, slower than under ONNX Runtime
                what += f"; {', '.join(slow)} met it but ran slower than fp32 under ONNX Runtime"
            raise ValidationError(f"no int8 variant met the budget ({self.budget}) in {len(self.trials)} tried{what}; "
                                  "nothing was written — loosen the budget or give more --budget-minutes")
        return self._write(out, chosen)

    def _build_float(self, tmp: Path, v: Variant):
        """The fp32 graph unchanged, with the runtime that ran it fastest, re-measured against the
        parent as every stage's output is."""
        from ..metrics import sample_dataset
        from ..stages.quantize import QuantizeConfig, _copy_preprocessing, _measure

        pm = self.parent.manifest
        for f in self.parent.path.glob(pm.model.file + "*"):  # model.onnx (+ model.onnx.data)
            shutil.copy2(f, tmp / f.name)
        _copy_preprocessing(self.parent, tmp)
        hint = v.openvino_config.get("INFERENCE_PRECISION_HINT", "f32")
        model = {**pm.model.model_dump(), "runtime": v.runtime, "openvino_config": dict(v.openvino_config),
                 "precision": "bf16" if hint == "bf16" else pm.model.precision, "target": self.target.name}
        manifest = pm.child(stage="tune", config={**self.cfg.model_dump(mode="json"), "chosen": v.model_dump(mode="json")},
                            model=model)
        check = QuantizeConfig(eval_data=self.cfg.data, eval_samples=self.cfg.eval_samples)
        manifest.metrics = _measure(self.parent, Artifact(tmp, manifest), check, self.pre, sample_dataset)
        return manifest

    def _quality_text(self, t: Trial) -> str:
        if self.metric == "accuracy" and t.accuracy_drop_points is not None:
            return f"{t.accuracy_drop_points:.2f} points below fp32"
        return f"agreement {_digits(t.quality.get('agreement', 0), self.min_agree)}"

    def _closest(self) -> Optional[Trial]:
        ok = [t for t in self.trials if t.error is None and t.variant.ptq not in ("fp32", "float")]
        if self.metric == "accuracy":
            return min(ok, key=lambda t: (t.accuracy_drop_points or 0, -t.speedup), default=None)
        return max(ok, key=lambda t: (t.quality.get("agreement", 0), t.speedup), default=None)

    def _write(self, out, chosen: Trial) -> TuneResult:
        from ..artifact import finalize, write_artifact
        from ..stages.quantize import build_quantized
        from .pareto import write_report

        self.say(f"writing {chosen.label} ({chosen.speedup:.2f}x fp32) to {out}")
        record = {"config": self.cfg.model_dump(mode="json"), "budget": self.budget, "metric": self.metric,
                  "machine": self.machine, "stopped": self.stopped, "chosen": chosen.variant.key(),
                  "trials": [t.model_dump(mode="json") for t in self.trials]}
        with write_artifact(out, self.parent, self.cfg) as tmp:
            if chosen.variant.ptq == "float":
                manifest = self._build_float(tmp, chosen.variant)
            else:
                qcfg = chosen.variant.quantize_config(self.cfg, self.target.name)
                manifest = build_quantized(self.parent, tmp, qcfg, self.target, self.pre, stage="tune",
                                           config={**self.cfg.model_dump(mode="json"), "chosen": qcfg.model_dump(mode="json")},
                                           session_config=chosen.variant.session_config, rewrites=chosen.variant.rewrites)
            manifest.metrics["tune"] = record
            warnings = []
            if chosen.speedup < 1:
                warnings.append(f"the chosen variant is {1 / chosen.speedup:.2f}x slower than fp32 on this machine: "
                                "int8 does not pay for this model here; keep the fp32 model")
            result = TuneResult(artifact=str(Path(out).expanduser().resolve()), budget=self.budget, metric=self.metric,
                                chosen=chosen, closest=None, trials=self.trials, stopped=self.stopped, warnings=warnings,
                                seconds=time.monotonic() - self.t0, machine=self.machine)
            for w in warnings:
                self.say(f"warning: {w}")
            report = write_report(result, self.ref_quality, tmp / "report")
            result.report = str(Path(result.artifact) / "report" / report.name)
            manifest = finalize(tmp, manifest)
        return result
