"""Image models: base64 ``images`` (JSON) or uploaded files, decoded and resized by Pillow off the
event loop, normalized per batch in the inference thread."""
from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...artifact import ImagePreprocessing
from .base import Codec, Options, RequestError, top_labels


class ImageCodec(Codec):
    """Any model with image preprocessing; answers its raw outputs by name (a task without its own codec)."""

    field = "images"
    kind = "image"
    decode_off_loop = True  # a big PNG takes seconds to decode: other requests must not wait for it
    accepts_files = True

    def setup(self, runtime) -> None:
        super().setup(runtime)
        from ..._optional import require
        from ...models.preprocess import Preprocessor

        require("serve", purpose="decoding image inputs", modules=("PIL",))
        self._pre = Preprocessor(self.artifact)

    def decode(self, value: Sequence[str]) -> list[np.ndarray]:
        # every item's base64 is checked before any image is decoded, so a bad item is named at once
        blobs = []
        for i, b in enumerate(value):
            try:
                blobs.append(base64.b64decode(b, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(f"images.{i}: not valid base64") from None
        return [self._image(b, f"images.{i}") for i, b in enumerate(blobs)]

    def decode_files(self, blobs: Sequence[bytes]) -> list[np.ndarray]:
        return [self._image(b, f"files.{i}") for i, b in enumerate(blobs)]

    def _image(self, data: bytes, where: str) -> np.ndarray:
        """One image at the model's size and channels, as float32 pixels (H, W[, C]) in their raw range."""
        from PIL import Image

        spec = self.manifest.io.preprocessing
        assert isinstance(spec, ImagePreprocessing)
        limit = self.settings.max_image_pixels
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only: the pixel limit holds before decoding
            if img.width * img.height > limit:
                raise RequestError(f"{where}: {img.width}x{img.height} pixels is over the limit of {limit}; downscale it first")
            img = img.convert("L" if spec.channels == 1 else "RGB")
            h, w = spec.size
            img = img.resize((w, h))
        except RequestError:
            raise
        except Exception as e:  # noqa: BLE001  Pillow raises many types for malformed files (incl. NotImplementedError)
            raise RequestError(f"{where}: not a decodable image ({type(e).__name__})") from None
        return np.asarray(img, dtype=np.float32)

    def preprocess(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        return {self.input_names[0]: self._pre.image(np.stack(items))}


class ImageClassificationCodec(ImageCodec):
    needs_labels = True

    def encode(self, outputs: list[np.ndarray], options: Options) -> dict:
        return {"predictions": top_labels(outputs[0], self.manifest.labels, options.top_k)}
