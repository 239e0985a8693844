"""One training loop for fine-tuning (and, later, distillation, QAT and prune recovery).

The caller supplies the model, a function that turns a batch of samples into
(inputs, targets) and a loss; the loop does shuffling, AdamW with a linear
warm-up/decay schedule, gradient clipping, validation after each epoch and
keeps the best weights. A non-finite loss stops training with a clear error.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import StageError


@dataclass
class TrainSettings:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: Optional[float]
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model, train_samples: Sequence, train_labels: np.ndarray, collate: Callable, s: TrainSettings,
        evaluate: Optional[Callable[[object], float]] = None, desc: str = "training") -> TrainResult:
    """Train ``model`` (a module returning logits from ``model(**inputs)`` or ``model(*inputs)``)."""
    import torch

    from .progress import progress

    seed_everything(s.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(len(train_samples) / s.batch_size)
    total = steps_per_epoch * s.epochs
    warm = max(1, int(total * s.warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min((k + 1) / warm, max(0.0, (total - k) / max(1, total - warm))))
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(s.seed)
    best_acc, best_epoch, best_state = -1.0, 0, None
    history = []
    with progress(desc, total) as advance:
        for epoch in range(1, s.epochs + 1):
            model.train()
            order = rng.permutation(len(train_samples))
            losses = []
            for i in range(0, len(order), s.batch_size):
                idx = order[i : i + s.batch_size]
                inputs = collate([train_samples[j] for j in idx])
                target = torch.as_tensor(train_labels[idx])
                out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
                logits = getattr(out, "logits", out)
                loss = loss_fn(logits, target)
                if not torch.isfinite(loss):
                    raise StageError(f"training loss became {loss.item()} at epoch {epoch}, step {i // s.batch_size + 1}; lower the learning rate (lr={s.lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                opt.step()
                sched.step()
                losses.append(loss.item())
                advance(1)
            model.eval()
            entry = {"epoch": epoch, "train_loss": float(np.mean(losses))}
            if evaluate is not None:
                with torch.no_grad():
                    acc = float(evaluate(model))
                entry["val_accuracy"] = acc
                if acc > best_acc:
                    best_acc, best_epoch = acc, epoch
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
            history.append(entry)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = s.epochs
    model.eval()
    return TrainResult(best_epoch=best_epoch, best_val_accuracy=best_acc if best_acc >= 0 else None, history=history)
