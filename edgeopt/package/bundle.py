"""`edgeopt package`: a self-contained bundle per target — the model, a Dockerfile rendered from
docker/, an offline wheelhouse for the target's platform and Python — and optionally its image."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel, Field

from .._version import __version__
from ..artifact import Artifact, load_artifact, sha256_file
from ..errors import ConfigError, TargetError
from ..outputs import BUNDLE_FILE, BUNDLE_MARK, staged_dir
from ..stages.registry import StageConfig
from ..targets import TargetSpec, get_target, unsupported_ops



class PackageConfig(StageConfig):
    target: str
    base_image: Optional[str] = None  # default: the target profile's
    tag: Optional[str] = None  # default: edgeopt/<model name>:<target>-<model sha8>
    port: int = Field(8000, ge=1, le=65535)
    build: bool = False
    push: bool = False
    wheelhouse: Optional[str] = None  # extra wheels (find-links), e.g. for offline hosts or Jetson's index


class Bundle(BaseModel):
    kind: str = BUNDLE_MARK  # first key of bundle.json: marks the folder as edgeopt's
    edgeopt_version: str = __version__
    path: str
    target: str
    platform: str
    base_image: str
    tag: str
    port: int
    model: dict
    packages: dict[str, str]  # the wheelhouse: what the image holds
    left_out: dict[str, str] = Field(default_factory=dict)  # packages not shipped, and why
    checks: dict = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256
    image: Optional[dict] = None  # after --build: id, size, architecture; after --push: digest


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return s or "model"


def default_tag(art: Artifact, spec: TargetSpec) -> str:
    return f"edgeopt/{_slug(art.name)}:{spec.name}-{model_sha256(art)[:8]}"


def model_sha256(art: Artifact) -> str:
    m = art.manifest
    f = getattr(m.model, "file", None)
    return m.files.get(f) if f and f in m.files else m.digest()


def check_tag(tag: str) -> str:
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?", tag):
        raise ConfigError(f"--tag {tag}: not a Docker image reference; use lowercase NAME[:TAG], e.g. registry.local/shop/classifier:v1")
    return tag


def check_servable(art: Artifact, spec: TargetSpec) -> dict:
    """What the target's runtime can run: the image serves ONNX files through ONNX Runtime."""
    m = art.manifest
    if spec.docker is None:
        raise TargetError(f"target '{spec.name}' has no serving image ({spec.os}, Python {spec.python}; edgeopt's runtime "
                          f"needs Python >= 3.10); export and quantize for it, or package for another target")
    if m.format == "trt" and spec.runtime == "tensorrt":
        # An engine runs as it is where its key matches the device; elsewhere the image rebuilds it
        # at first start from the ONNX it keeps (source/), into the engine-cache volume.
        model_file = art.path / m.model.source
    elif m.task == "text-generation":
        model_file = _language_model_file(art, spec)
    elif m.format != "onnx":
        raise ConfigError(f"{art.path} is a {m.format} artifact; images serve ONNX"
                          + (" (TensorRT engines: on TensorRT targets)" if m.format == "trt" else "")
                          + f": run `edgeopt export {art.path} -o OUT --target {spec.name}` first and package OUT")
    else:
        model_file = art.path / m.model.file
    runtime = getattr(m.model, "runtime", "onnxruntime")
    if runtime == "openvino":  # edgeopt tune chose OpenVINO on the CPU it was measured on
        from ..targets import get_target

        tuned = get_target(m.model.target) if m.model.target else None
        if spec.runtime != "onnxruntime" or (tuned is not None and tuned.arch != spec.arch):
            raise TargetError(f"{art.path} was tuned to run under OpenVINO on {m.model.target or 'a CPU'}; target "
                              f"'{spec.name}' runs {spec.runtime} on {spec.arch}: tune the fp32 model for it "
                              f"(edgeopt tune FP32 --target {spec.name} ...) and package that")
    problems = unsupported_ops(spec, model_file) if runtime == "onnxruntime" else []
    if problems:
        raise TargetError(f"{art.path} cannot run on target '{spec.name}': " + "; ".join(problems))
    q = getattr(m.model, "quantization", None) or {}
    if q and spec.runtime == "tensorrt" and not q.get("activation_symmetric", False):
        raise TargetError(f"{art.path} was quantized for '{q.get('target')}' with asymmetric int8, which TensorRT rejects "
                          f"(non-zero zero points); quantize the fp32 ONNX again with --target {spec.name}")
    return {"ops": ("checked" if runtime == "onnxruntime" else f"not checked ({runtime} runs it)") if problems is not None
            else "skipped (the onnx package is not installed)", "format": m.format, "precision": m.model.precision,
            **({"runtime": runtime} if runtime != "onnxruntime" else {})}


def _language_model_file(art: Artifact, spec: TargetSpec) -> Path:
    """A language model's image runs ONNX Runtime GenAI's generator on the CPU: its exported folder, for a
    CPU target, built for GenAI's cpu provider."""
    m = art.manifest
    if m.format != "genai":
        raise ConfigError(f"{art.path} is a {m.format} language model; images serve the exported model: run "
                          f"`edgeopt export {art.path} -o OUT` (then, for int4 weights, `edgeopt quantize OUT -o INT4 "
                          f"--weights int4`) and package that")
    if spec.runtime != "onnxruntime":
        from ..targets import target_names

        cpu = ", ".join(n for n in target_names() if get_target(n).runtime == "onnxruntime" and get_target(n).docker is not None)
        raise TargetError(f"{art.path} is a language model for ONNX Runtime GenAI's CPU provider; target '{spec.name}' "
                          f"runs {spec.runtime}: language-model images are built for CPU targets ({cpu}); "
                          f"serve it on the GPU with `edgeopt serve {art.path}` where onnxruntime-genai-cuda is installed")
    provider = (m.model.builder or {}).get("execution_provider", "cpu")
    if provider != "cpu":
        raise TargetError(f"{art.path} was built for ONNX Runtime GenAI's {provider} provider; target '{spec.name}' runs "
                          f"it on the CPU: export it again for the cpu provider and package that")
    return art.path / m.model.file


def package(artifact: Artifact | str | Path, out: str | Path, config: PackageConfig,
            on_status: Callable[[str], None] = lambda s: None) -> Bundle:
    """Write a bundle (model + Dockerfile + wheelhouse) for ``config.target``; with ``build``, build its
    image on the local Docker engine (the bundle is written first and kept if Docker is missing)."""
    from . import render, wheelhouse

    spec = get_target(config.target)
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    checks = check_servable(art, spec)
    tag = check_tag(config.tag) if config.tag else default_tag(art, spec)
    if config.push and not config.build:
        raise ConfigError("--push needs --build (the image is built from the bundle, then pushed)")
    base = config.base_image or spec.docker.base_image
    extra = Path(config.wheelhouse).expanduser().resolve() if config.wheelhouse else None
    if extra is not None and not extra.is_dir():
        raise ConfigError(f"--wheelhouse {config.wheelhouse}: not a folder; give a folder of .whl files")
    pre = art.manifest.io.preprocessing
    with staged_dir(out, art, extra, kind="bundle") as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        on_status(f"copying the model ({art.name})")
        shutil.copytree(art.path, tmp / "model", ignore=shutil.ignore_patterns("__pycache__"))
        wheels = tmp / "wheels"
        wheels.mkdir()
        wheelhouse.build_edgeopt_wheel(wheels)
        extras = ("serve", "engine") if spec.runtime == "tensorrt" else ("serve",)
        if getattr(art.manifest.model, "runtime", "onnxruntime") == "openvino":
            extras += ("openvino",)
        if art.manifest.task == "text-generation":  # ONNX Runtime GenAI's generator, jinja2 for the chat template
            extras += ("genai",)
        reqs = wheelhouse.runtime_requirements(spec, extras)
        on_status(f"downloading wheels for {spec.platform}, Python {spec.python}: {', '.join(spec.packages)} + edgeopt[{','.join(extras)}]")
        wheelhouse.download(spec, reqs, wheels, find_links=extra)
        left_out = wheelhouse.trim(wheels, "text" if art.manifest.task == "text-generation" else pre.kind if pre is not None else None)
        labels = render.labels(spec, model_sha256(art), art.manifest.digest(), art.manifest.task, art.name)
        (tmp / "Dockerfile").write_text(render.render(spec, base, config.port, labels, {}))
        bundle = Bundle(path=str(Path(out).expanduser().resolve()), target=spec.name, platform=spec.platform,
                        base_image=base, tag=tag, port=config.port,
                        model={"name": art.name, "sha256": model_sha256(art), "manifest_sha256": art.manifest.digest(),
                               "task": art.manifest.task, "format": art.manifest.format,
                               "precision": art.manifest.model.precision, "labels": labels},
                        packages=wheelhouse.lock(wheels), left_out=left_out, checks=checks)
        bundle.files = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        _write(tmp, bundle)
    if config.build:
        from .build import build_bundle

        bundle = build_bundle(Path(bundle.path), push_image=config.push, on_status=on_status)
    return bundle


def _write(folder: Path, bundle: Bundle) -> None:
    data = bundle.model_dump(mode="json")
    (folder / BUNDLE_FILE).write_text(json.dumps(data, indent=2) + "\n")


def load_bundle(path: str | Path) -> Bundle:
    p = Path(path).expanduser()
    f = p / BUNDLE_FILE
    if not f.is_file():
        raise ConfigError(f"{path}: not an edgeopt bundle (no {BUNDLE_FILE}); create one with `edgeopt package ARTIFACT --target T -o {path}`")
    try:
        data = json.loads(f.read_text())
        b = Bundle.model_validate(data)
    except Exception as e:
        raise ConfigError(f"{f}: unreadable bundle file ({str(e).splitlines()[0][:200]})") from e
    b.path = str(p.resolve())
    return b


def update_bundle(bundle: Bundle) -> None:
    """Record the image (build/push results) in bundle.json, atomically (bundle.json is not in `files`)."""
    p = Path(bundle.path)
    tmp = p / f".{BUNDLE_FILE}.tmp"
    tmp.write_text(json.dumps(bundle.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(p / BUNDLE_FILE)
