"""Turn raw samples into model inputs, from the artifact's preprocessing spec.

Shared by export checks, quantization calibration, bench and serve, so every
stage sees inputs prepared the same way. Needs neither torch nor transformers: text goes
through ``tokenizers`` (TextTokenizer), images through numpy (resize_bilinear).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..artifact import Artifact, ImagePreprocessing, TextPreprocessing
from ..errors import InputError
from .imageops import resize_bilinear


class Preprocessor:
    def __init__(self, artifact: Artifact):
        self.spec = artifact.manifest.io.preprocessing
        self.input_names = [t.name for t in artifact.manifest.io.inputs]
        self.kind = self.spec.kind if self.spec is not None else None
        self._tokenizer = None  # a TextTokenizer; its save_pretrained(dst) writes the folder (with transformers)
        self._converted = None
        if isinstance(self.spec, TextPreprocessing):
            from .tokenizer import (
                TOKENIZER_FILE,
                TextTokenizer,
                save_tokenizer,
                tokenizer_folder,
            )

            folder = tokenizer_folder(artifact)
            if artifact.manifest.format == "hf" and folder.is_dir() and not (folder / TOKENIZER_FILE).is_file():
                # A checkpoint as its author saved it, with a slow tokenizer only: the stages that read
                # one have transformers, so convert it once (checked against the original) for this run.
                import tempfile

                self._converted = tempfile.TemporaryDirectory(prefix="edgeopt-tokenizer-")
                folder = save_tokenizer(folder, self._converted.name)
            self._tokenizer = TextTokenizer(folder)

    def __call__(self, samples, seq_len: int | None = None) -> dict[str, np.ndarray]:
        if isinstance(self.spec, TextPreprocessing):
            return self.text(list(samples), seq_len)
        if isinstance(self.spec, ImagePreprocessing):
            return {self.input_names[0]: self.image(samples)}
        raise InputError("this artifact records no preprocessing; feed raw tensors by its IO spec instead")

    def text(self, texts: Sequence[str], seq_len: int | None = None) -> dict[str, np.ndarray]:
        spec = self.spec
        assert isinstance(spec, TextPreprocessing)
        if seq_len:
            enc = self._tokenizer(list(texts), padding="max_length", max_length=seq_len)
        else:
            enc = self._tokenizer(list(texts), padding="longest", max_length=spec.max_length)
        return self._feeds(enc)

    def tokenize(self, texts: Sequence[str]) -> list:
        """Texts -> one unpadded ``Tokens`` each (truncated to max_length); ``collate`` batches them.
        ``collate(tokenize(texts))`` equals ``text(texts)``; the server uses the pair to know each
        text's cost (its token count) before it chooses a batch."""
        assert isinstance(self.spec, TextPreprocessing)
        return self._tokenizer.encode(list(texts), max_length=self.spec.max_length)

    def collate(self, tokens: Sequence) -> dict[str, np.ndarray]:
        return self._feeds(self._tokenizer.pad(tokens))

    def _feeds(self, enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name in self.input_names:
            if name in enc:
                out[name] = enc[name].astype(np.int64)
            else:
                raise InputError(f"the tokenizer does not produce input '{name}' that the model needs")
        return out

    def image(self, images) -> np.ndarray:
        spec = self.spec
        assert isinstance(spec, ImagePreprocessing)
        x = np.asarray(images, dtype=np.float32)
        c = spec.channels
        h, w = spec.size
        if x.ndim == 3:  # (N,H,W): grey images
            x = x[:, None, :, :]
        elif x.ndim == 4 and x.shape[-1] == c and x.shape[1] != c:  # NHWC -> NCHW
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != c:
            raise InputError(f"images of shape {tuple(x.shape)} do not fit the model's {c}x{h}x{w} input")
        if x.shape[2:] != (h, w):
            x = resize_bilinear(x, h, w)
        x = x * spec.scale
        mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
        return ((x - mean) / std).astype(np.float32)

