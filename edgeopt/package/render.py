"""Dockerfile rendering from the templates in docker/ (shipped as edgeopt._docker)."""
from __future__ import annotations

import json
import re
from importlib import resources

from .._version import __version__
from ..targets import TargetSpec


def template(name: str) -> str:
    return resources.files("edgeopt._docker").joinpath(f"Dockerfile.{name}").read_text()


def labels(spec: TargetSpec, model_sha256: str, manifest_sha256: str, task: str, title: str) -> dict[str, str]:
    """OCI labels (and edgeopt's own): what the image holds, for `docker inspect` and deploy."""
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": f"edgeopt serving image of {title} for {spec.name}",
        "org.opencontainers.image.version": __version__,
        "io.edgeopt.version": __version__,
        "io.edgeopt.target": spec.name,
        "io.edgeopt.platform": spec.platform,
        "io.edgeopt.task": task,
        "io.edgeopt.model.sha256": model_sha256,
        "io.edgeopt.manifest.sha256": manifest_sha256,
    }


def _quote(value: str) -> str:
    """A Dockerfile LABEL/ENV value: double-quoted, '$' not expanded, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False).replace("$", "\\$")


def render(spec: TargetSpec, base_image: str, port: int, label_map: dict[str, str], env: dict[str, str]) -> str:
    assert spec.docker is not None
    stack = ", ".join(f"{k} {v}" for k, v in spec.stack.model_dump().items() if v) or "none"
    values = {
        "DESCRIPTION": f"{spec.name} ({spec.description})",
        "EDGEOPT_VERSION": __version__,
        "BASE_IMAGE": base_image,
        "TARGET": spec.name,
        "PORT": str(port),
        "STACK": stack,
        "ENGINE_CACHE": spec.engine.cache_dir or "/var/cache/edgeopt/engines",
        "LABELS": " \\\n      ".join(f"{k}={_quote(v)}" for k, v in label_map.items()),
        "EXTRA_ENV": "".join(f" \\\n    {k}={_quote(v)}" for k, v in env.items()),
        "EXTRA_RUN": "",
    }
    text = template(spec.docker.template)
    out = re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], text)
    return out
