"""`edgeopt package` without Docker: bundles (model + Dockerfile + offline wheelhouse), edgeopt's own
wheel, the runtime requirements per target, Dockerfile rendering, bad input through the CLI, and the
small helpers of deploy / remote bench. Nothing here needs a Docker daemon (tests/test_docker.py does).

The bundles download wheels from PyPI (pip's cache and configuration apply): they are built once per
module and shared."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _support import EDGEOPT_BIN, REPO
from edgeopt.artifact import load_artifact, sha256_file
from edgeopt.errors import ConfigError
from edgeopt.outputs import check_output, is_bundle_dir
from edgeopt.package import PackageConfig, load_bundle, package
from edgeopt.package import render, wheelhouse
from edgeopt.targets import get_target

HOST_PY = sys.executable
ORT = "1.31.1"


def cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    e = {**os.environ, "EDGEOPT_QUIET": "1", **(env or {})}
    e.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def nothing_at(out: Path) -> None:
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def dockerfile_instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        out.append(" ".join((cur + s).split()))
        cur = ""
    assert not cur, "a continuation line ends the Dockerfile"
    return out


def instr(text: str, keyword: str) -> list[str]:
    return [i for i in dockerfile_instructions(text) if i.split(" ", 1)[0].upper() == keyword]


def wheel_tags(name: str) -> tuple[str, str, str, str, str]:
    """(dist, version, python, abi, platform) of a wheel file name."""
    stem = name[:-len(".whl")]
    parts = stem.split("-")
    assert len(parts) in (5, 6), name
    return parts[0], parts[1], parts[-3], parts[-2], parts[-1]


def check_wheel_platforms(wheels: list[Path], machine: str, glibc_minor: int, py: str) -> None:
    """Every wheel installs on the target: its machine, a manylinux tag no newer than its glibc, its Python."""
    cp = "cp" + py.replace(".", "")
    for w in wheels:
        _, _, pyt, abi, plat = wheel_tags(w.name)
        for p in plat.split("."):
            if p == "any":
                continue
            assert p.endswith(machine), (w.name, machine)
            m = re.fullmatch(r"manylinux_2_(\d+)_\w+", p)
            if m:
                assert int(m[1]) <= glibc_minor, (w.name, glibc_minor)
            else:
                assert re.fullmatch(r"manylinux(2014|1|2010)_\w+", p), w.name
        pys = pyt.split(".")
        assert any(x in (cp, "py3", "py2.py3") or x.startswith("py3") or (x.startswith("cp3") and abi == "abi3")
                   for x in pys), w.name
        if abi not in ("none", "abi3"):
            assert abi.startswith(cp), w.name


def check_edgeopt_wheel(whl: Path) -> list[str]:
    """A valid wheel: metadata files, RECORD matching every member, edgeopt's data files, no caches."""
    assert zipfile.is_zipfile(whl)
    with zipfile.ZipFile(whl) as z:
        assert z.testzip() is None
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        version = info.removeprefix("edgeopt-").removesuffix(".dist-info")
        assert whl.name == f"edgeopt-{version}-py3-none-any.whl"
        for f in ("METADATA", "WHEEL", "RECORD", "entry_points.txt"):
            assert f"{info}/{f}" in names, f
        meta = z.read(f"{info}/METADATA").decode()
        assert re.search(r"^Name: edgeopt$", meta, re.M) and re.search(rf"^Version: {re.escape(version)}$", meta, re.M)
        wheel_file = z.read(f"{info}/WHEEL").decode()
        assert "Root-Is-Purelib: true" in wheel_file and "Tag: py3-none-any" in wheel_file
        assert re.search(r"^edgeopt\s*=\s*edgeopt\.cli\.main:main$", z.read(f"{info}/entry_points.txt").decode(), re.M)
        rows = list(csv.reader(io.StringIO(z.read(f"{info}/RECORD").decode())))
        recorded = {r[0]: r for r in rows if r}
        assert set(recorded) == set(names), set(recorded) ^ set(names)
        for arc, row in recorded.items():
            if arc == f"{info}/RECORD":
                assert row[1:] == ["", ""]
                continue
            body = z.read(arc)
            digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            assert row[1] == f"sha256={digest}", arc
            assert row[2] == str(len(body)), arc
    assert len(names) == len(set(names)), "duplicate members"
    for n in names:
        assert "__pycache__" not in n and not n.endswith((".pyc", ".pyo")), n
        assert "_examples" not in n, n
        assert n.startswith(("edgeopt/", info + "/")), n
    for t in ("x86", "rpi5", "rpi4", "gpu-server", "jetson-orin", "jetson-xavier"):
        assert f"edgeopt/_targets/{t}.yaml" in names, t
    for d in ("Dockerfile.cpu", "Dockerfile.gpu"):
        assert f"edgeopt/_docker/{d}" in names, d
    for mod in ("edgeopt/__init__.py", "edgeopt/cli/main.py", "edgeopt/package/slim.py", "edgeopt/serve/app.py",
                "edgeopt/serve/healthcheck.py"):
        assert mod in names, mod
    return names


@pytest.fixture(scope="module", autouse=True)
def installed_metadata():
    """`python -m pytest` puts the checkout on sys.path, where an ignored edgeopt.egg-info (left by a
    setuptools build) may shadow the installed dist-info for importlib.metadata, and the repo's docker/
    folder shadows the docker SDK. The `edgeopt` command never has the checkout on sys.path: neither
    do these tests (test_wheel_metadata_with_an_egg_info_first covers the shadowing itself)."""
    def inside_checkout(entry: str) -> bool:
        try:
            return Path(entry or ".").resolve() == REPO
        except OSError:
            return False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "path", [p for p in sys.path if not inside_checkout(p)])
        yield


# ---------------------------------------------------------------------------------------------
# bundles (module-scoped: each downloads its wheelhouse once)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pkg_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("package")


@pytest.fixture(scope="module")
def x86_bundle(pkg_dir, emb_onnx):
    status: list[str] = []
    b = package(emb_onnx, pkg_dir / "b", PackageConfig(target="x86"), on_status=status.append)
    assert status, "no status lines"
    return b


@pytest.fixture(scope="module")
def rpi5_bundle(pkg_dir, emb_onnx):
    return package(emb_onnx.path, pkg_dir / "rpi", PackageConfig(target="rpi5"))


def test_x86_bundle_json(x86_bundle, emb_onnx, pkg_dir):
    out = pkg_dir / "b"
    assert x86_bundle.path == str(out.resolve())
    raw = (out / "bundle.json").read_text()
    doc = json.loads(raw)
    assert next(iter(doc.items())) == ("kind", "edgeopt bundle")
    assert doc["target"] == "x86" and doc["platform"] == "linux/amd64"
    assert doc["base_image"] == "python:3.11-slim" and doc["port"] == 8000
    assert doc["image"] is None
    m = emb_onnx.manifest
    assert m.model.file == "model.onnx"
    sha = m.files["model.onnx"]
    assert doc["model"]["sha256"] == sha == sha256_file(out / "model" / "model.onnx")
    assert doc["model"]["manifest_sha256"] == m.digest()
    assert doc["model"]["name"] == emb_onnx.name and doc["model"]["format"] == "onnx"
    assert doc["model"]["task"] == m.task
    assert doc["tag"] == f"edgeopt/{emb_onnx.name}:x86-{sha[:8]}"
    assert re.fullmatch(r"edgeopt/[a-z0-9._-]+:x86-[0-9a-f]{8}", doc["tag"])
    assert doc["checks"]["format"] == "onnx" and doc["checks"]["ops"] == "checked"
    from edgeopt._version import __version__

    assert doc["edgeopt_version"] == __version__
    # load_bundle reads it back unchanged
    lb = load_bundle(out)
    assert lb.model_dump(mode="json") == doc
    assert x86_bundle.model_dump(mode="json") == doc


def test_x86_bundle_model_is_the_verified_artifact(x86_bundle, emb_onnx, pkg_dir):
    art = load_artifact(pkg_dir / "b" / "model")  # verifies every file's sha256
    assert art.manifest.digest() == emb_onnx.manifest.digest()
    assert art.manifest.files == emb_onnx.manifest.files
    got = {p.relative_to(pkg_dir / "b" / "model").as_posix() for p in (pkg_dir / "b" / "model").rglob("*") if p.is_file()}
    want = {p.relative_to(emb_onnx.path).as_posix() for p in emb_onnx.path.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert got == want


def test_x86_bundle_files_and_bundle_dir(x86_bundle, pkg_dir):
    out = pkg_dir / "b"
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(x86_bundle.files) == on_disk - {"bundle.json"}
    assert "bundle.json" not in x86_bundle.files
    for rel, digest in x86_bundle.files.items():
        assert sha256_file(out / rel) == digest, rel
    assert "Dockerfile" in x86_bundle.files and "model/model.onnx" in x86_bundle.files
    assert is_bundle_dir(out)
    # no temporary sibling left behind
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".b.")]


def test_x86_dockerfile(x86_bundle, emb_onnx, pkg_dir):
    text = (pkg_dir / "b" / "Dockerfile").read_text()
    assert not re.search(r"\{\{[A-Z_]+\}\}", text)
    assert "ARG BASE_IMAGE=python:3.11-slim" in text.splitlines()
    froms = instr(text, "FROM")
    assert froms == ["FROM ${BASE_IMAGE} AS build", "FROM ${BASE_IMAGE}"]
    runs = instr(text, "RUN")
    assert any("pip install" in r and "--no-index" in r for r in runs)
    assert all("--no-index" in r for r in runs if "pip install" in r)
    assert instr(text, "USER") == ["USER 10001:10001"]
    # the user is set after the last RUN of the final stage
    ins = dockerfile_instructions(text)
    assert ins.index("USER 10001:10001") > max(i for i, x in enumerate(ins) if x.startswith("RUN "))
    hc = instr(text, "HEALTHCHECK")
    assert len(hc) == 1 and "curl" not in hc[0] and "wget" not in hc[0]
    assert "edgeopt.serve.healthcheck" in hc[0]
    assert instr(text, "ENTRYPOINT") == ['ENTRYPOINT ["/opt/edgeopt/bin/edgeopt", "serve"]']
    assert instr(text, "EXPOSE") == ["EXPOSE 8000"]
    env = " ".join(instr(text, "ENV"))
    assert "EDGEOPT_TARGET=x86" in env and "EDGEOPT_PORT=8000" in env and "EDGEOPT_ARTIFACT=/opt/model" in env
    assert "EDGEOPT_ENGINE_CACHE" not in env and "VOLUME" not in text
    assert "--system-site-packages" not in text
    labels = instr(text, "LABEL")
    assert len(labels) == 1
    pairs = dict(re.findall(r'([\w.\-]+)=("(?:[^"\\]|\\.)*")', labels[0]))
    pairs = {k: json.loads(v) for k, v in pairs.items()}
    from edgeopt._version import __version__

    sha = emb_onnx.manifest.files["model.onnx"]
    assert pairs["io.edgeopt.model.sha256"] == sha
    assert pairs["io.edgeopt.version"] == __version__
    assert pairs["io.edgeopt.target"] == "x86" and pairs["io.edgeopt.platform"] == "linux/amd64"
    assert pairs["io.edgeopt.manifest.sha256"] == emb_onnx.manifest.digest()
    assert pairs["org.opencontainers.image.title"] == emb_onnx.name
    assert pairs["org.opencontainers.image.version"] == __version__
    assert pairs == x86_bundle.model["labels"]
    assert "COPY wheels /wheels" in ins and "COPY model /opt/model" in ins


def test_x86_wheelhouse(x86_bundle, pkg_dir):
    wheels = sorted((pkg_dir / "b" / "wheels").glob("*"))
    assert wheels and all(w.suffix == ".whl" for w in wheels)
    names = [w.name for w in wheels]
    assert [n for n in names if re.fullmatch(r"edgeopt-[^-]+-py3-none-any\.whl", n)]
    ort = [n for n in names if n.startswith("onnxruntime-")]
    assert len(ort) == 1 and re.fullmatch(rf"onnxruntime-{re.escape(ORT)}-cp311-cp311-manylinux[\w.]*x86_64\.whl", ort[0]), ort
    dists = {wheelhouse.normalize(wheel_tags(n)[0]) for n in names}
    for need in ("numpy", "tokenizers", "fastapi", "uvicorn", "starlette", "pydantic", "pyyaml", "typer", "rich",
                 "prometheus-client", "python-multipart"):
        assert need in dists, need
    for never in ("huggingface-hub", "hf-xet", "pillow", "torch", "transformers", "onnxruntime-gpu", "httpx",
                  "protobuf", "onnx"):
        assert never not in dists, never
    assert x86_bundle.packages == {wheelhouse.normalize(wheel_tags(n)[0]): wheel_tags(n)[1] for n in names}
    assert x86_bundle.packages["onnxruntime"] == ORT
    for left in ("huggingface-hub", "hf-xet", "pillow"):
        assert left in x86_bundle.left_out and x86_bundle.left_out[left].strip(), left
    assert "text" in x86_bundle.left_out["pillow"]
    assert set(x86_bundle.left_out) <= set(wheelhouse.NOT_AT_RUNTIME) | set(wheelhouse.IMAGE_ONLY)
    assert not set(x86_bundle.left_out) & set(x86_bundle.packages)
    check_wheel_platforms(wheels, "x86_64", 28, "3.11")


def test_bundle_edgeopt_wheel_is_valid(x86_bundle, pkg_dir):
    whl = next((pkg_dir / "b" / "wheels").glob("edgeopt-*.whl"))
    check_edgeopt_wheel(whl)


def test_rpi5_bundle(rpi5_bundle, emb_onnx, pkg_dir):
    out = pkg_dir / "rpi"
    doc = json.loads((out / "bundle.json").read_text())
    assert next(iter(doc)) == "kind" and doc["kind"] == "edgeopt bundle"
    assert doc["target"] == "rpi5" and doc["platform"] == "linux/arm64"
    sha = emb_onnx.manifest.files["model.onnx"]
    assert doc["tag"] == f"edgeopt/{emb_onnx.name}:rpi5-{sha[:8]}"
    wheels = sorted((out / "wheels").glob("*.whl"))
    names = [w.name for w in wheels]
    ort = [n for n in names if n.startswith("onnxruntime-")]
    assert len(ort) == 1 and re.fullmatch(rf"onnxruntime-{re.escape(ORT)}-cp311-cp311-manylinux[\w.]*aarch64\.whl", ort[0]), ort
    assert not [n for n in names if "x86_64" in n or "amd64" in n or "win" in n.split("-")[-1] or "macosx" in n]
    check_wheel_platforms(wheels, "aarch64", 36, "3.11")
    for need in ("numpy", "tokenizers", "pydantic-core", "pyyaml"):
        pkg = [n for n in names if wheelhouse.normalize(wheel_tags(n)[0]) == need]
        assert pkg, need
    assert [n for n in names if n.startswith("numpy-") and "aarch64" in n]
    text = (out / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    env = " ".join(instr(text, "ENV"))
    assert "EDGEOPT_TARGET=rpi5" in env
    assert 'io.edgeopt.platform="linux/arm64"' in text and 'io.edgeopt.target="rpi5"' in text
    assert is_bundle_dir(out)
    for rel, digest in rpi5_bundle.files.items():
        assert sha256_file(out / rel) == digest, rel


def test_existing_bundle_is_replaceable_but_a_users_folder_is_not(x86_bundle, pkg_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(pkg_dir / "b" / "bundle.json", copy / "bundle.json")
    shutil.copytree(pkg_dir / "b" / "model", copy / "model")
    assert is_bundle_dir(copy)
    assert check_output(copy, kind="bundle") == copy.resolve()
    (copy / "notes.txt").write_text("mine")
    assert not is_bundle_dir(copy)
    with pytest.raises(ConfigError, match="not an edgeopt bundle"):
        check_output(copy, kind="bundle")
    (copy / "notes.txt").unlink()
    # bundle.json whose first key is not edgeopt's mark: not a bundle
    doc = json.loads((copy / "bundle.json").read_text())
    kind = doc.pop("kind")
    (copy / "bundle.json").write_text(json.dumps({**doc, "kind": kind}))
    assert not is_bundle_dir(copy)


# ---------------------------------------------------------------------------------------------
# package() with the download stubbed: options, without touching the network
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_download(monkeypatch):
    calls = []

    def fake(spec, reqs, dest, find_links=None):
        calls.append((spec.name, list(reqs), find_links))

    monkeypatch.setattr(wheelhouse, "download", fake)
    return calls


def test_package_options_base_image_port_tag_wheelhouse(emb_onnx, tmp_path, no_download):
    extra = tmp_path / "extra-wheels"
    extra.mkdir()
    b = package(emb_onnx, tmp_path / "b", PackageConfig(target="x86", base_image="local/debian:bookworm", port=9001,
                                                        tag="registry.local:5000/shop/emb:v1", wheelhouse=str(extra)))
    text = (tmp_path / "b" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=local/debian:bookworm" in text.splitlines()
    assert "python:3.11-slim" not in text
    assert instr(text, "EXPOSE") == ["EXPOSE 9001"] and "EDGEOPT_PORT=9001" in " ".join(instr(text, "ENV"))
    assert b.base_image == "local/debian:bookworm" and b.port == 9001 and b.tag == "registry.local:5000/shop/emb:v1"
    assert no_download == [("x86", wheelhouse.runtime_requirements(get_target("x86")), extra.resolve())]
    assert list(b.packages) == ["edgeopt"]  # only edgeopt's own wheel: the download was stubbed
    assert is_bundle_dir(tmp_path / "b")


def test_package_alias_and_image_model(vit_onnx, tmp_path, no_download):
    b = package(vit_onnx, tmp_path / "v", PackageConfig(target="rpi"))  # alias of rpi5
    assert b.target == "rpi5" and b.platform == "linux/arm64" and ":rpi5-" in b.tag
    assert b.model["task"] == vit_onnx.manifest.task


def test_trim_keeps_pillow_for_image_models(tmp_path):
    for n in ("pillow-11.0.0-cp311-cp311-manylinux_2_28_x86_64.whl", "huggingface_hub-0.30.0-py3-none-any.whl",
              "hf_xet-1.1.0-cp37-abi3-manylinux_2_17_x86_64.whl", "numpy-2.2.0-cp311-cp311-manylinux_2_17_x86_64.whl"):
        (tmp_path / n).write_bytes(b"")
    left = wheelhouse.trim(tmp_path, "image")
    assert set(left) == {"huggingface-hub", "hf-xet"}
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.whl")) == ["numpy", "pillow"]
    left = wheelhouse.trim(tmp_path, "text")
    assert set(left) == {"pillow"}
    assert wheelhouse.lock(tmp_path) == {"numpy": "2.2.0"}


# ---------------------------------------------------------------------------------------------
# edgeopt's own wheel, installed in a fresh venv outside the checkout
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wheel")
    before = {p.name for p in REPO.iterdir()}
    whl = wheelhouse.build_edgeopt_wheel(d)
    assert {p.name for p in REPO.iterdir()} == before, "build_edgeopt_wheel wrote into the checkout"
    assert whl.parent == d and list(d.iterdir()) == [whl]
    return whl


def test_edgeopt_wheel_is_valid(built_wheel):
    check_edgeopt_wheel(built_wheel)


def test_wheel_metadata_with_an_egg_info_first(tmp_path, monkeypatch):
    """A checkout on sys.path holding edgeopt.egg-info (what `python -m ...` from the checkout sees)."""
    egg = tmp_path / "edgeopt.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: edgeopt\nVersion: 0.1.0\n")
    (egg / "entry_points.txt").write_text("[console_scripts]\nedgeopt = edgeopt.cli.main:main\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "w").mkdir()
    whl = wheelhouse.build_edgeopt_wheel(tmp_path / "w")
    with zipfile.ZipFile(whl) as z:
        meta = z.read("edgeopt-0.1.0.dist-info/METADATA").decode()
    assert "Name: edgeopt" in meta


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    return env


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, built_wheel, x86_bundle, pkg_dir) -> Path:
    """A fresh venv (no pip of its own) holding the x86 bundle's runtime wheels and the edgeopt wheel
    built here, installed like the image's Dockerfile does: --no-index --no-deps."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "v"
    subprocess.run([HOST_PY, "-m", "venv", "--without-pip", str(venv)], check=True, cwd=root, env=_clean_env())
    deps = [str(w) for w in sorted((pkg_dir / "b" / "wheels").glob("*.whl")) if not w.name.startswith("edgeopt-")]
    for batch in (deps, [str(built_wheel)]):
        proc = subprocess.run([HOST_PY, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index",
                               "--no-deps", "--no-compile", "--disable-pip-version-check", "-q", *batch],
                              capture_output=True, text=True, cwd=root, env=_clean_env(), timeout=600)
        assert proc.returncode == 0, proc.stderr
    return venv


def _in_venv(venv: Path, code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd=venv.parent, env=_clean_env(), timeout=300, **kw)


def test_wheel_installs_and_imports_outside_the_checkout(wheel_venv):
    proc = _in_venv(wheel_venv, "import sys, edgeopt; from edgeopt.targets import get_target; t = get_target('rpi5'); "
                                "print(edgeopt.__file__); print(t.platform); print(repr(sys.path))")
    assert proc.returncode == 0, proc.stderr
    file, plat, path = proc.stdout.splitlines()
    assert Path(file).is_relative_to(wheel_venv) and "site-packages" in file
    assert plat == "linux/arm64"
    assert str(REPO) not in path
    proc = _in_venv(wheel_venv, "from edgeopt.package import render; t = render.template('cpu'); "
                                "assert 'ENTRYPOINT' in t; from edgeopt.targets import target_names; print(target_names())")
    assert proc.returncode == 0, proc.stderr
    assert "x86" in proc.stdout and "gpu-server" in proc.stdout


def test_wheel_venv_passes_the_images_build_checks(wheel_venv):
    """What the Dockerfile's build stage runs: the imports, `edgeopt serve --help`, then slim."""
    proc = _in_venv(wheel_venv, "import edgeopt.serve.app, onnxruntime, numpy, tokenizers; print(onnxruntime.__version__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ORT
    proc = subprocess.run([str(wheel_venv / "bin" / "edgeopt"), "serve", "--help"], capture_output=True, text=True,
                          cwd=wheel_venv.parent, env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(wheel_venv / "bin" / "python"), "-m", "edgeopt.package.slim", str(wheel_venv)],
                          capture_output=True, text=True, cwd=wheel_venv.parent, env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "edgeopt slim: removed" in proc.stdout
    proc = _in_venv(wheel_venv, "import edgeopt.serve.app, onnxruntime, numpy, tokenizers, edgeopt.cli.main")
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# runtime requirements per target
# ---------------------------------------------------------------------------------------------

def _names(reqs: list[str]) -> dict[str, str]:
    from packaging.requirements import Requirement

    out = {}
    for r in reqs:
        req = Requirement(r)
        assert req.marker is None, r
        out[wheelhouse.normalize(req.name)] = r
    return out


def test_runtime_requirements_gpu_server():
    reqs = wheelhouse.runtime_requirements(get_target("gpu-server"))
    names = _names(reqs)
    assert names["onnxruntime-gpu"] == f"onnxruntime-gpu=={ORT}"
    assert "onnxruntime" not in names
    assert not [r for r in reqs if r.startswith("onnxruntime") and not r.startswith("onnxruntime-gpu")]


@pytest.mark.parametrize("target", ["x86", "rpi5", "rpi4"])
def test_runtime_requirements_cpu_targets(target):
    reqs = wheelhouse.runtime_requirements(get_target(target))
    names = _names(reqs)
    assert names["onnxruntime"] == f"onnxruntime=={ORT}"
    assert "onnxruntime-gpu" not in names
    assert len([r for r in reqs if r.startswith("onnxruntime")]) == 1


@pytest.mark.parametrize("target", ["x86", "rpi5", "gpu-server", "jetson-orin"])
def test_runtime_requirements_serve_and_never_training(target):
    names = _names(wheelhouse.runtime_requirements(get_target(target)))
    for need in ("fastapi", "uvicorn", "numpy", "tokenizers", "pydantic", "pyyaml", "prometheus-client"):
        assert need in names, need
    for never in ("torch", "transformers", "peft", "onnx", "onnxscript", "matplotlib", "docker", "scikit-learn",
                  "edgeopt", "pytest"):
        assert never not in names, never
    assert names == _names(wheelhouse.runtime_requirements(get_target(target), extras=("serve",)))
    assert "fastapi" not in _names(wheelhouse.runtime_requirements(get_target(target), extras=()))


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

def _render(target: str, base: str | None = None, port: int = 8000) -> str:
    spec = get_target(target)
    labels = render.labels(spec, "a" * 64, "b" * 64, "text-classification", "m")
    return render.render(spec, base or spec.docker.base_image, port, labels, {})


def test_render_gpu_server():
    spec = get_target("gpu-server")
    text = _render("gpu-server")
    assert "{{" not in text
    assert f"ARG BASE_IMAGE={spec.docker.base_image}" in text.splitlines()
    runs = instr(text, "RUN")
    assert any("python3 -m venv --system-site-packages /opt/edgeopt" in r for r in runs)
    cache = spec.engine.cache_dir
    assert cache == "/var/cache/edgeopt/engines"
    assert instr(text, "VOLUME") == [f"VOLUME {cache}"]
    env = " ".join(instr(text, "ENV"))
    assert f"EDGEOPT_ENGINE_CACHE={cache}" in env and "EDGEOPT_TARGET=gpu-server" in env
    assert any(f"chown 10001:10001 {cache}" in r for r in runs)
    assert instr(text, "USER") == ["USER 10001:10001"]
    assert len(instr(text, "FROM")) == 2
    assert instr(text, "ENTRYPOINT") == ['ENTRYPOINT ["/opt/edgeopt/bin/edgeopt", "serve"]']
    hc = instr(text, "HEALTHCHECK")
    assert len(hc) == 1 and "curl" not in hc[0]
    assert "io.edgeopt.model.sha256=" in text and 'io.edgeopt.target="gpu-server"' in text
    assert "TensorRT" in text and "10.13" in text  # the stack in the header comment


def test_render_cpu_and_base_override():
    text = _render("x86", base="registry.local/py:3.11")
    assert "ARG BASE_IMAGE=registry.local/py:3.11" in text.splitlines()
    assert "--system-site-packages" not in text and "VOLUME" not in text
    assert "{{" not in text


def test_render_labels_are_quoted():
    spec = get_target("x86")
    labels = render.labels(spec, "s", "m", "t", 'we"ird name')
    text = render.render(spec, "python:3.11-slim", 8000, labels, {"FOO": "a b"})
    label = instr(text, "LABEL")[0]
    assert 'org.opencontainers.image.title="we\\"ird name"' in label
    assert 'FOO="a b"' in " ".join(instr(text, "ENV"))


# ---------------------------------------------------------------------------------------------
# bad input through the CLI: exit 2, one line, nothing written
# ---------------------------------------------------------------------------------------------

def test_cli_unknown_target(emb_onnx, tmp_path):
    out = tmp_path / "b"
    line = one_error_line(cli("package", emb_onnx.path, "--target", "mars", "-o", out, cwd=tmp_path), 2)
    assert "mars" in line and "x86" in line
    nothing_at(out)


def test_cli_hf_artifact_says_export_first(tiny_text_classifier, tmp_path):
    out = tmp_path / "b"
    line = one_error_line(cli("package", tiny_text_classifier, "--target", "x86", "-o", out, cwd=tmp_path), 2)
    assert "edgeopt export" in line and "ONNX" in line
    nothing_at(out)


def test_cli_dynamic_int8_on_gpu_server(cls_int8_dynamic, tmp_path):
    out = tmp_path / "b"
    line = one_error_line(cli("package", cls_int8_dynamic.path, "--target", "gpu-server", "-o", out, cwd=tmp_path), 2)
    assert "MatMulInteger" in line or "DynamicQuantizeLinear" in line
    assert "gpu-server" in line and "--ptq static" in line
    nothing_at(out)


def test_cli_jetson_xavier_has_no_image(emb_onnx, tmp_path):
    out = tmp_path / "b"
    line = one_error_line(cli("package", emb_onnx.path, "--target", "jetson-xavier", "-o", out, cwd=tmp_path), 2)
    assert "no serving image" in line and "jetson-xavier" in line
    nothing_at(out)


def test_cli_refuses_a_users_folder(emb_onnx, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = one_error_line(cli("package", emb_onnx.path, "--target", "x86", "-o", out, cwd=tmp_path), 2)
    assert "mine" in line and "not an edgeopt bundle" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine.")]


def test_cli_refuses_an_existing_file(emb_onnx, tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    one_error_line(cli("package", emb_onnx.path, "--target", "x86", "-o", out, cwd=tmp_path), 2)
    assert out.read_text() == "x"


def test_cli_push_needs_build(emb_onnx, tmp_path):
    out = tmp_path / "b"
    line = one_error_line(cli("package", emb_onnx.path, "--target", "x86", "-o", out, "--push", cwd=tmp_path), 2)
    assert "--push" in line and "--build" in line
    nothing_at(out)


def test_cli_bad_tag(emb_onnx, tmp_path):
    out = tmp_path / "b"
    line = one_error_line(cli("package", emb_onnx.path, "--target", "x86", "-o", out, "--tag", "Bad Tag", cwd=tmp_path), 2)
    assert "Bad Tag" in line and "Docker image reference" in line
    nothing_at(out)


@pytest.mark.parametrize("tag", ["edgeopt/m:v1", "registry.local:5000/shop/classifier:v1", "m", "a.b/c_d/e:1.0-rc"])
def test_check_tag_accepts(tag):
    from edgeopt.package.bundle import check_tag

    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["Bad Tag", "UPPER/case:v1", "m:", "m:-x", "/m", "m//n"])
def test_check_tag_refuses(tag):
    from edgeopt.package.bundle import check_tag

    with pytest.raises(ConfigError):
        check_tag(tag)


def test_cli_wheelhouse_is_a_file(emb_onnx, tmp_path):
    out = tmp_path / "b"
    f = tmp_path / "wheels.txt"
    f.write_text("")
    line = one_error_line(cli("package", emb_onnx.path, "--target", "x86", "-o", out, "--wheelhouse", f, cwd=tmp_path), 2)
    assert "--wheelhouse" in line and "not a folder" in line
    nothing_at(out)


def test_cli_no_docker_engine_keeps_the_bundle(emb_onnx, tmp_path):
    out = tmp_path / "b"
    proc = cli("package", emb_onnx.path, "--target", "x86", "-o", out, "--build", cwd=tmp_path,
               env={"DOCKER_HOST": "unix:///tmp/nonexistent-docker.sock"})
    line = one_error_line(proc, 1)
    assert "no Docker engine answers" in line
    assert "systemctl start docker" in line or "dockerd" in line
    assert "DOCKER_HOST" in line
    assert f"The bundle is written at {out.resolve()}" in line
    assert f"docker build --platform linux/amd64 -t edgeopt/{emb_onnx.name}:x86-" in line
    assert line.rstrip("`").endswith(str(out.resolve()))
    assert (out / "bundle.json").is_file() and is_bundle_dir(out)
    b = load_bundle(out)
    assert b.image is None and b.target == "x86"
    assert f"-t {b.tag} " in line


# ---------------------------------------------------------------------------------------------
# deploy / remote bench helpers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ssh://pi@raspberrypi.local", "ssh://pi@raspberrypi.local:2222", "ssh://device",
                                 "tcp://10.0.0.2:2376", "unix:///var/run/docker.sock"])
def test_check_host_url_accepts(url):
    from edgeopt.package.engine import check_host_url

    assert check_host_url(url) is None


@pytest.mark.parametrize("url", ["ftp://x", "ssh://", "raspberrypi.local", "pi@raspberrypi.local", ""])
def test_check_host_url_refuses(url):
    from edgeopt.package.engine import check_host_url

    with pytest.raises(ConfigError, match="ssh://USER@DEVICE"):
        check_host_url(url)


def _untar(payload: bytes, dest: Path) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(payload)) as t:
        names = t.getnames()
        for m in t.getmembers():
            assert not m.name.startswith("/") and ".." not in m.name.split("/")
        t.extractall(dest, filter="data") if sys.version_info >= (3, 12) else t.extractall(dest)
    return names


def test_data_archive_sklearn_digits(tmp_path):
    from edgeopt.data import load_dataset
    from edgeopt.package.deploy import _data_archive

    payload, name = _data_archive("sklearn:digits:test", "image-classification")
    assert name == "data.npz"
    names = _untar(payload, tmp_path)
    assert names == ["edgeopt-data", "edgeopt-data/data.npz"]
    ds = load_dataset(tmp_path / "edgeopt-data" / "data.npz")
    ref = load_dataset("sklearn:digits:test")
    assert ds.kind == "image" and ds.samples.ndim == 3 and ds.samples.shape[1:] == (8, 8)
    assert ds.samples.shape == np.asarray(ref.samples).shape
    assert np.array_equal(ds.samples, np.asarray(ref.samples, np.float32))
    assert ds.labels == list(ref.labels)


def test_data_archive_file_is_shipped_as_is(tmp_path, text_jsonl):
    from edgeopt.package.deploy import _data_archive

    payload, name = _data_archive(str(text_jsonl), "text-classification")
    assert name == text_jsonl.name
    _untar(payload, tmp_path)
    assert (tmp_path / "edgeopt-data" / name).read_bytes() == text_jsonl.read_bytes()


def test_data_archive_bad_file_fails_on_the_host(tmp_path):
    from edgeopt.errors import InputError
    from edgeopt.package.deploy import _data_archive

    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="bad.jsonl"):
        _data_archive(str(bad), None)


def test_device_info_from_host_root(tmp_path, monkeypatch):
    from edgeopt.bench.core import device_info

    model = tmp_path / "sys" / "firmware" / "devicetree" / "base" / "model"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n")
    monkeypatch.setenv("EDGEOPT_HOST_ROOT", str(tmp_path))
    assert device_info() == {"board": "Raspberry Pi 5 Model B Rev 1.0", "l4t": "r36.4.0"}


def test_device_info_empty_host_root(tmp_path, monkeypatch):
    from edgeopt.bench.core import device_info

    monkeypatch.setenv("EDGEOPT_HOST_ROOT", str(tmp_path))
    assert device_info() == {}


def test_data_archive_refuses_data_of_the_wrong_kind(text_jsonl):
    from edgeopt.errors import ConfigError
    from edgeopt.package.deploy import _data_archive

    with pytest.raises(ConfigError, match="text data for a model that takes image input"):
        _data_archive(str(text_jsonl), "image-classification")
