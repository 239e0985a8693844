"""Text models: texts in the request's ``inputs``, tokenized per batch in the inference thread."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Codec, Options, top_labels


class TextCodec(Codec):
    """Any model with text preprocessing; answers its raw outputs by name (a task without its own codec)."""

    field = "inputs"
    kind = "text"

    def setup(self, runtime) -> None:
        super().setup(runtime)
        from ...models.preprocess import Preprocessor

        self._pre = Preprocessor(self.artifact)  # loads the tokenizer: slow, so here and not in __init__

    def decode(self, value: Sequence[str]) -> list[str]:
        # the request schema already bounds the count and each text's length; nothing to do per text
        return list(value)

    def preprocess(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        # tokenized per batch: padding goes to the batch's longest text, not the model's max_length
        return self._pre(items)


class TextClassificationCodec(TextCodec):
    needs_labels = True

    def encode(self, outputs: list[np.ndarray], options: Options) -> dict:
        return {"predictions": top_labels(outputs[0], self.manifest.labels, options.top_k)}


class FeatureExtractionCodec(TextCodec):
    def encode(self, outputs: list[np.ndarray], options: Options) -> dict:
        return {"embeddings": outputs[0].astype(float).tolist()}
