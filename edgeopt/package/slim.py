"""Run inside an image's build stage: `python -m edgeopt.package.slim VENV`.

Removes what a serving venv never uses (pip, setuptools, test suites, ONNX Runtime's offline
tools), then compiles the modules a server and an in-image bench import (by importing them once),
so a non-root container does not recompile them at every start; the rest stays uncompiled,
which keeps the image smaller than compiling everything (17 MB of .pyc files).
Prints what it removed and the bytes saved."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# Relative to site-packages. ONNX Runtime's transformers/quantization/tools packages are the
# offline optimizers and quantizers (edgeopt export/quantize run them on the host).
REMOVE = ["pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth", "wheel",
          "onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools", "onnxruntime/datasets",
          "numpy/_pyinstaller", "numpy/f2py", "numpy/distutils",
          "onnxruntime_genai/models"]  # ONNX Runtime GenAI's model builder (edgeopt export runs it on the host)


# What `edgeopt serve` (and `edgeopt bench` in the image) import: compiled at build time.
WARM_IMPORTS = ["edgeopt.cli.main", "edgeopt.serve.app", "edgeopt.serve.batcher", "edgeopt.serve.metrics",
                "edgeopt.serve.codecs.text", "edgeopt.serve.codecs.image", "edgeopt.serve.codecs.tensors",
                "edgeopt.serve.healthcheck", "edgeopt.runtime.onnxruntime", "edgeopt.models.preprocess",
                "edgeopt.models.tokenizer", "edgeopt.bench.core", "edgeopt.bench.worker", "edgeopt.bench.report",
                "edgeopt.formats.onnx", "edgeopt.metrics", "edgeopt.data", "onnxruntime", "numpy", "tokenizers",
                "fastapi", "starlette.middleware.gzip", "uvicorn", "uvicorn.main", "uvicorn.loops.asyncio",
                "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.on", "prometheus_client", "yaml", "pydantic",
                "rich.markdown", "typer"]
# Language-model images also hold these (edgeopt[genai]): compiled where installed.
WARM_IF_INSTALLED = ["onnxruntime_genai", "jinja2", "jinja2.sandbox", "edgeopt.serve.llm", "edgeopt.llm.generate",
                     "edgeopt.llm.tokenizer", "edgeopt.llm.sampling", "edgeopt.bench.llm", "edgeopt.formats.genai"]


def _size(p: Path) -> int:
    if p.is_file() or p.is_symlink():
        return p.lstat().st_size
    return sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() or f.is_symlink())


def slim(venv: Path) -> int:
    site = next(venv.glob("lib/python3*/site-packages"))
    saved = 0
    targets = [site / r for r in REMOVE]
    targets += [p for p in site.glob("pip-*.dist-info")] + [p for p in site.glob("setuptools-*.dist-info")]
    targets += [p for p in site.glob("wheel-*.dist-info")]
    targets += [d for d in site.rglob("tests") if d.is_dir() and d.parent.name != "site-packages"]
    # pygments' 600 lexers: rich imports pygments (typer's help renders through it) but never
    # highlights code in a server; the package and its lexer table stay importable.
    targets += [f for f in site.glob("pygments/lexers/*.py") if f.name not in ("__init__.py", "_mapping.py")]
    for p in targets:
        if p.exists() or p.is_symlink():
            saved += _size(p)
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for d in list(site.rglob("__pycache__")):
        shutil.rmtree(d, ignore_errors=True)
    for b in venv.glob("bin/pip*"):
        b.unlink()
    warm = "import importlib, importlib.util\nimport " + ", ".join(WARM_IMPORTS) + "\n"
    warm += (f"if importlib.util.find_spec('onnxruntime_genai'):\n    for m in {WARM_IF_INSTALLED!r}:\n"
             "        importlib.import_module(m)\n")
    subprocess.run([str(venv / "bin" / "python"), "-c", warm], check=True,
                   env={"PATH": "/usr/bin:/bin", "ORT_DISABLE_TELEMETRY": "1"})
    print(f"edgeopt slim: removed {saved / 1e6:.1f} MB from {venv}")
    return saved


if __name__ == "__main__":
    # --keep PATH: a REMOVE entry the image needs (GPU images: onnxruntime/transformers, whose
    # float16 converter casts graphs for TensorRT 11's strongly typed builds)
    keep = {sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--keep" and i + 1 < len(sys.argv)}
    REMOVE[:] = [r for r in REMOVE if r not in keep]
    slim(Path(sys.argv[1]))
    subprocess.run([sys.executable, "-c", "import edgeopt"], check=True)
