"""The wheelhouse of a bundle: edgeopt's own wheel plus the runtime's wheels for the target's
platform and Python, so the image builds offline (`pip install --no-index`)."""
from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from importlib import metadata, resources
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, StageError
from ..targets import TargetSpec

# Installed with edgeopt's core and [serve] but never used by `edgeopt serve` in an image: left out
# of the wheelhouse (and so of the image). tokenizers needs huggingface_hub only for
# Tokenizer.from_pretrained; the server reads tokenizer.json from the artifact.
NOT_AT_RUNTIME = {
    "huggingface-hub": "tokenizers uses it only to download from the Hub; the image reads tokenizer.json",
    "hf-xet": "the Hub's download backend (via huggingface_hub)",
    "fsspec": "via huggingface_hub",
    "filelock": "via huggingface_hub",
    "tqdm": "via huggingface_hub",
    "typer-slim": "via huggingface_hub's CLI",
    "httpx2": "via huggingface_hub", "httpcore2": "via huggingface_hub", "truststore": "via huggingface_hub",
    "httpx": "the HTTP client of `edgeopt bench --url`; the server makes no requests",
    "httpcore": "via httpx", "certifi": "via httpx",
    "protobuf": "ONNX Runtime needs it for its offline tools only, not for inference",
}
# Needed only for one kind of input: left out when the model takes the other.
IMAGE_ONLY = {"pillow": "image decoding; this model takes text"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution():
    """The installed edgeopt distribution with full metadata (a dist-info with METADATA): a stale
    edgeopt.egg-info in a source checkout on sys.path (from an in-tree pip build) has none."""
    from .._version import __version__

    found = [d for d in metadata.distributions(name="edgeopt") if d.read_text("METADATA")]
    found.sort(key=lambda d: d.version != __version__)
    if not found:
        raise StageError("the installed edgeopt has no package metadata (METADATA); reinstall it with pip")
    return found[0]


def build_edgeopt_wheel(dest: Path) -> Path:
    """A wheel of the edgeopt that is running (whatever way it was installed): its modules, target
    profiles and Docker templates, with its installed metadata. Built in ``dest``: nothing is
    written into a source checkout (no build/ or egg-info)."""
    import edgeopt

    dist = _distribution()
    version = dist.version
    files: dict[str, Path] = {}
    root = Path(edgeopt.__file__).parent
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and "__pycache__" not in rel and not rel.endswith(".pyc") and not rel.startswith("_examples/"):
            files[f"edgeopt/{rel}"] = f
    for pkg, folder in (("edgeopt._targets", "_targets"), ("edgeopt._docker", "_docker")):
        for f in resources.files(pkg).iterdir():
            p = Path(str(f))
            if p.is_file() and p.suffix != ".pyc":
                files[f"edgeopt/{folder}/{p.name}"] = p
    info = f"edgeopt-{version}.dist-info"
    meta = {f"{info}/METADATA": (dist.read_text("METADATA") or "").encode(),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: edgeopt package\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            f"{info}/entry_points.txt": (dist.read_text("entry_points.txt") or "").encode()}
    record = []
    wheel = dest / f"edgeopt-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, body in [*((a, p.read_bytes()) for a, p in files.items()), *meta.items()]:
            z.writestr(zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0)), body, zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(body)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return wheel


def runtime_requirements(spec: TargetSpec, extras: tuple[str, ...] = ("serve",)) -> list[str]:
    """edgeopt's requirements with ``extras`` for the target's platform and Python, with the target's
    pinned runtime packages in place of onnxruntime (e.g. onnxruntime-gpu on GPU targets)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "python_version": spec.python, "python_full_version": f"{spec.python}.0",
           "platform_machine": {"amd64": "x86_64", "arm64": "aarch64"}[spec.arch], "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    pinned = {normalize(Requirement(p).name): p for p in spec.packages}
    replaced = {"onnxruntime", "onnxruntime-gpu"} if any(n.startswith("onnxruntime") for n in pinned) else set()
    out: dict[str, str] = {}
    for raw in _distribution().requires or []:
        req = Requirement(raw)
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            continue
        name = normalize(req.name)
        if name == "edgeopt" or name in replaced or name in pinned:
            continue
        req.marker = None
        out[name] = str(req)
    out.update(pinned)
    return sorted(out.values())


def download(spec: TargetSpec, requirements: list[str], dest: Path, find_links: Optional[Path] = None) -> None:
    """pip download of the requirements' whole closure, binary wheels for the target only."""
    abi = "cp" + spec.python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", spec.python, "--abi", abi,
           "--abi", "abi3", "--abi", "none", *[x for p in spec.wheel_platforms() for x in ("--platform", p)],
           "-d", str(dest)]
    if spec.package_index:
        cmd += ["--extra-index-url", spec.package_index]
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        err = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else f"exit {proc.returncode}")
        where = f" (from {spec.package_index} as well as PyPI)" if spec.package_index else ""
        hint = ("; on a machine without access, pass --wheelhouse DIR holding those wheels"
                if "No matching distribution" in err or "Could not find" in err or "connection" in err.lower() else "")
        raise StageError(f"downloading the runtime wheels for target '{spec.name}' ({spec.platform}, Python {spec.python})"
                         f"{where} failed: {err.removeprefix('ERROR: ')}{hint}")


def trim(wheels: Path, task_input: Optional[str]) -> dict[str, str]:
    """Drop wheels the serving image never imports; return {package: why} for bundle.json."""
    drop = dict(NOT_AT_RUNTIME)
    if task_input == "text":
        drop.update(IMAGE_ONLY)
    left_out = {}
    for whl in sorted(wheels.glob("*.whl")):
        name = normalize(whl.name.split("-")[0])
        if name in drop:
            left_out[name] = drop[name]
            whl.unlink()
    return left_out


def lock(wheels: Path) -> dict[str, str]:
    """{package: version} of the wheelhouse, what the image will hold."""
    out = {}
    for whl in sorted(wheels.glob("*.whl")):
        parts = whl.name.split("-")
        if len(parts) < 3:
            raise ConfigError(f"{whl}: not a wheel file name")
        out[normalize(parts[0])] = parts[1]
    return out
