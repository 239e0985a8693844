"""Text models: texts in the request's ``inputs``, tokenized per request when it is decoded (so the
micro-batcher knows each text's token count), padded per batch in the inference thread."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Codec, Options, top_labels

INLINE_CHARS = 1000  # a request with more characters is tokenized on a decode thread


class TextCodec(Codec):
    """Any model with text preprocessing; answers its raw outputs by name (a task without its own codec)."""

    field = "inputs"
    kind = "text"

    def setup(self, runtime) -> None:
        super().setup(runtime)
        from ...models.preprocess import Preprocessor

        self._pre = Preprocessor(self.artifact)  # loads the tokenizer: slow, so here and not in __init__

    def decode(self, value: Sequence[str]) -> list:
        # the request schema already bounds the count and each text's length; tokens past max_length are cut
        return self._pre.tokenize(value)

    def from_samples(self, samples: Sequence[str]) -> list:
        return self._pre.tokenize(samples)

    def heavy(self, value: Sequence[str]) -> bool:
        # tokenizing takes ~0.4 us a character: beyond ~1,000 it is cheaper to hop to a thread
        return sum(len(t) for t in value) > INLINE_CHARS

    def costs(self, items: Sequence[Any]) -> list[int]:
        return [len(t) for t in items]

    def preprocess(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        # padding goes to the batch's longest text, not the model's max_length
        return self._pre.collate(items)


class TextClassificationCodec(TextCodec):
    needs_labels = True

    def encode(self, outputs: list[np.ndarray], options: Options) -> dict:
        return {"predictions": top_labels(outputs[0], self.manifest.labels, options.top_k)}


class FeatureExtractionCodec(TextCodec):
    def encode(self, outputs: list[np.ndarray], options: Options) -> dict:
        return {"embeddings": outputs[0].astype(float).tolist()}
