from __future__ import annotations

from typing import Optional

import numpy as np

from ..artifact import Artifact


class TorchRuntime:
    """Eager PyTorch inference: the fp32 baseline every conversion is compared with."""

    def __init__(self, artifact: Artifact, threads: Optional[int] = None, module=None):
        import torch

        from ..models import load_torch_model

        if threads:
            torch.set_num_threads(int(threads))
        self.module = module if module is not None else load_torch_model(artifact)
        self.input_names = [t.name for t in artifact.manifest.io.inputs]
        self.output_names = [t.name for t in artifact.manifest.io.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names])
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.float().numpy() for o in out]
