"""The codec contract: how one task turns requests into model feeds and model outputs into responses.

Shaped like LitServe's ``LitAPI`` hooks (``decode_request -> batch -> predict -> unbatch ->
encode_response``): a codec decodes one request into per-item objects, ``preprocess`` turns a
*batch* of items into the model's feeds, and ``encode`` turns one caller's slice of the outputs
into its response. The micro-batcher sits between ``decode`` and ``preprocess`` and does the
unbatching itself, so a codec never sees who else shared its batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ...artifact import Artifact
    from ...runtime import Runtime
    from ..app import ServeSettings


class RequestError(Exception):
    """A request the server will not run: answered with ``status`` and ``{"error": message}``.
    Codecs raise it instead of a web framework's exception, so they run (and test) without one."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Options:
    """Request options that shape the response only; the model call never depends on them, so
    requests with different options still share a batch."""

    top_k: int = 1


class Codec:
    """One task's request/response mapping. Subclasses set the class attributes and override the hooks.

    Threads: ``decode`` runs per request, on the event loop, or on a decode thread (under the
    request timeout) when ``heavy(value)`` says so; ``setup`` runs once in the loader thread;
    ``preprocess`` runs in the inference thread on a whole batch; ``encode`` runs on the event loop.
    ``costs`` gives the micro-batcher each decoded item's cost (a text's token count) so a batch's
    work stays under the token limit; None: items cost the same and only their count is bounded.
    """

    field: ClassVar[str]  # the PredictRequest field it reads ("inputs", "images", "tensors")
    kind: ClassVar[str | None] = None  # the artifact preprocessing kind it reads ("text", "image")
    needs_labels: ClassVar[bool] = False  # classifiers: without labels the artifact gets the generic codec
    decode_off_loop: ClassVar[bool] = False  # decoding is always heavy (images): keep it off the event loop
    accepts_files: ClassVar[bool] = False  # serves POST /v1/predict/images (multipart uploads)

    def __init__(self, artifact: Artifact, settings: ServeSettings):
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.settings = settings
        # the manifest's names until setup() takes the runtime's own
        self.input_names = [t.name for t in artifact.manifest.io.inputs]
        self.output_names = [t.name for t in artifact.manifest.io.outputs]

    def setup(self, runtime: Runtime) -> None:
        """Once, in the loader thread, after the model loaded: heavy state (a tokenizer) belongs here."""
        self.input_names = list(runtime.input_names)
        self.output_names = list(runtime.output_names)

    def decode(self, value: Any) -> list:
        """The request field's value -> one object per input item (validated; RequestError if not)."""
        raise NotImplementedError

    def from_samples(self, samples: Sequence[Any]) -> list:
        """Dataset samples (``edgeopt.metrics.sample_dataset``) as decoded items, for the warm-up."""
        return list(samples)

    def heavy(self, value: Any) -> bool:
        """Decoding ``value`` would hold the event loop up: run it on a decode thread."""
        return self.decode_off_loop

    def costs(self, items: Sequence[Any]) -> list[int] | None:
        """Each decoded item's cost in a batch (e.g. tokens); None: no cost beyond the item count."""
        return None

    def decode_files(self, blobs: Sequence[bytes]) -> list:
        """Uploaded files (multipart) -> one object per file; only codecs with ``accepts_files``."""
        raise NotImplementedError

    def preprocess(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """A batch of decoded items (from any number of requests) -> the model's feeds."""
        raise NotImplementedError

    def encode(self, outputs: list[np.ndarray], options: Options) -> dict:
        """One caller's outputs (its rows of every model output) -> its response body, less "model".
        By default: every output by name, as the raw-tensors path answers."""
        return {"outputs": named_outputs(self.output_names, outputs)}


def named_outputs(names: Sequence[str], outputs: Sequence[np.ndarray]) -> dict[str, list]:
    return {n: o.tolist() for n, o in zip(names, outputs)}


def top_labels(logits: np.ndarray, labels: Sequence[str], top_k: int) -> list[dict]:
    """Softmax over the last axis; per row the best label and score, plus the top_k list when top_k > 1."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    preds = []
    for row in p:
        order = np.argsort(-row)[:top_k]
        top = [{"label": labels[i], "score": float(row[i])} for i in order]
        preds.append({**top[0], "top": top} if top_k > 1 else top[0])
    return preds
