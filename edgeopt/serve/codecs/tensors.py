"""Raw tensors by the model's IO spec, for any task: the caller has done the preprocessing and
made the batch itself, so these requests skip the micro-batcher (see ``predict``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec, RequestError


class TensorsCodec(Codec):
    field = "tensors"

    def decode(self, value: dict[str, Any]) -> dict[str, np.ndarray]:  # type: ignore[override]
        """name -> nested lists  =>  the model's feeds, checked against the IO spec (names, dtype, rank,
        fixed dims, batch limit). Unlike the task codecs, this returns feeds, not per-item objects."""
        spec = {t.name: t for t in self.manifest.io.inputs}
        missing = sorted(set(spec) - set(value))
        extra = sorted(set(value) - set(spec))
        if missing or extra:
            raise RequestError(f"tensors: need exactly {sorted(spec)} (missing {missing}, unexpected {extra})")
        feeds = {}
        for name, t in spec.items():
            try:
                arr = np.asarray(value[name], dtype=np.dtype(t.dtype))
            except (ValueError, TypeError, OverflowError):
                raise RequestError(f"tensors.{name}: not a rectangular {t.dtype} array") from None
            if arr.ndim != len(t.shape) or any(isinstance(d, int) and d != s for d, s in zip(t.shape, arr.shape)) or arr.size == 0:
                raise RequestError(f"tensors.{name}: shape {list(arr.shape)} does not match {t.shape}")
            if arr.shape[0] > self.settings.max_items:
                raise RequestError(f"tensors.{name}: batch {arr.shape[0]} over the limit of {self.settings.max_items}")
            feeds[name] = arr
        return feeds

    def predict(self, runtime, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the caller's own batch as is (in the inference thread). Values the spec cannot check
        (an out-of-vocabulary id) fail inside the model: that is the caller's error, not the server's."""
        try:
            return runtime.run(feeds)
        except Exception as e:  # noqa: BLE001  each runtime raises its own types
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise RequestError(f"tensors: the model rejected them ({detail})") from None
