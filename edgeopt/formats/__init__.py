"""Artifact formats: one handler per format, registered here by name.

A handler owns what edgeopt knows about its format — the typed ``manifest.model`` section, the
model files, how the artifact loads into a runtime and what that needs installed, and how
``inspect`` describes it. Adding a format is one handler module, its
runtime module, and one entry in ``HANDLERS``.
"""
from __future__ import annotations

from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from .base import FormatHandler, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import Artifact

HANDLERS: dict[str, str] = {
    "hf": "edgeopt.formats.hf:HfHandler",
    "torch": "edgeopt.formats.torch:TorchHandler",
    "onnx": "edgeopt.formats.onnx:OnnxHandler",
    "trt": "edgeopt.formats.trt:TrtHandler",
    "genai": "edgeopt.formats.genai:GenaiHandler",
}

def _handler_class(fmt: str) -> type[FormatHandler]:
    module, cls = HANDLERS[fmt].split(":")
    return getattr(import_module(module), cls)


# The typed manifest section, discriminated by its "format" key (handler modules are light:
# they import their libraries only when an artifact is loaded into a runtime).
AnyModel = Annotated[Union[tuple(_handler_class(f).model for f in HANDLERS)], Field(discriminator="format")]


@cache
def get_handler(fmt: str) -> FormatHandler:
    from ..errors import InputError

    if fmt not in HANDLERS:
        raise InputError(f"format '{fmt}' is not supported by this edgeopt; known formats: {', '.join(HANDLERS)}")
    return _handler_class(fmt)()


def handler_for(artifact: "Artifact") -> FormatHandler:
    return get_handler(artifact.manifest.format)


__all__ = ["HANDLERS", "AnyModel", "FormatHandler", "ModelInfo", "get_handler", "handler_for"]
