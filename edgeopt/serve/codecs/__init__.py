"""Codecs: per task, how requests become model feeds and outputs become responses (see ``base``).

``CODECS`` maps a manifest task to its codec; adding a task is one ``Codec`` subclass and one
entry there. ``TensorsCodec`` (raw tensors) serves every task besides.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Codec, Options, RequestError, named_outputs, top_labels
from .image import ImageClassificationCodec, ImageCodec
from .tensors import TensorsCodec
from .text import FeatureExtractionCodec, TextClassificationCodec, TextCodec

if TYPE_CHECKING:  # pragma: no cover
    from ...artifact import Artifact
    from ..app import ServeSettings

CODECS: dict[str, type[Codec]] = {
    "text-classification": TextClassificationCodec,
    "feature-extraction": FeatureExtractionCodec,
    "image-classification": ImageClassificationCodec,
}

# By preprocessing kind, for an artifact whose task has no codec here, or one its codec cannot
# read (a classifier without labels): inputs decoded as usual, outputs answered raw, by name.
GENERIC: dict[str, type[Codec]] = {"text": TextCodec, "image": ImageCodec}


def codec_class(artifact: Artifact) -> type[Codec] | None:
    """The codec for this artifact's task and preprocessing; None when it records no preprocessing
    (then it takes raw tensors only)."""
    m = artifact.manifest
    kind = m.io.preprocessing.kind if m.io.preprocessing is not None else None
    if kind is None:
        return None
    cls = CODECS.get(m.task)
    if cls is None or cls.kind != kind or (cls.needs_labels and not m.labels):
        return GENERIC[kind]
    return cls


def codec_for(artifact: Artifact, settings: ServeSettings) -> Codec | None:
    cls = codec_class(artifact)
    return cls(artifact, settings) if cls is not None else None


__all__ = ["CODECS", "GENERIC", "Codec", "FeatureExtractionCodec", "ImageClassificationCodec", "ImageCodec", "Options",
           "RequestError", "TensorsCodec", "TextClassificationCodec", "TextCodec", "codec_class", "codec_for",
           "named_outputs", "top_labels"]
