"""Choosing the next token from a row of logits: greedy, or sampled with temperature, top-k and
top-p (nucleus), the way Hugging Face's generate applies them (temperature, then top-k, then top-p)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from pydantic import BaseModel, Field


class SamplingConfig(BaseModel):
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    top_k: int = Field(0, ge=0)  # 0: off
    top_p: float = Field(1.0, gt=0, le=1)  # 1: off
    seed: Optional[int] = None
    stop: list[str] = Field(default_factory=list)  # strings that end the continuation (not included)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_token(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """One token id from a 1-D row of logits."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if cfg.greedy:
        return int(np.argmax(logits))
    z = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < z.size:
        kth = np.partition(z, -cfg.top_k)[-cfg.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - np.max(z))
    p /= p.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, cfg.top_p) + 1)]  # the smallest set reaching top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[keep] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
