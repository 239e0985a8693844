"""One training loop, shared by fine-tuning, distillation, QAT and prune recovery.

The caller supplies the model and ``batch_loss(model, indices) -> loss``; the loop does
shuffling (sharded by rank under torchrun, with DistributedDataParallel), AdamW with linear
warm-up/decay, gradient accumulation, clipping, bf16 autocast where the device has it,
progress bars, validation after each epoch, and keeps the best weights. A non-finite loss
stops every rank with a clear error that names the last good epoch.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import distributed as D
from .errors import StageError


@dataclass
class TrainSettings:
    epochs: int = 3
    batch_size: int = 32  # per process, per step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    mixed_precision: bool = True  # bf16 autocast on CUDA; CPUs train in fp32
    max_steps: Optional[int] = None  # stop after this many optimizer steps (the epoch then ends early)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: Optional[float]
    history: list[dict] = field(default_factory=list)
    world_size: int = 1


class TrainingDiverged(StageError):
    pass


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cross_entropy_loss(collate: Callable, samples, labels: np.ndarray) -> Callable:
    """batch_loss for plain supervised classification."""
    import torch

    def loss(model, idx):
        inputs = collate([samples[j] for j in idx])
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
        logits = getattr(out, "logits", out)
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels[idx], device=logits.device))

    return loss


def fit(model, n_train: int, batch_loss: Callable, s: TrainSettings,
        evaluate: Optional[Callable[[object], float]] = None, desc: str = "training",
        params: Optional[list] = None, after_step: Optional[Callable[[], None]] = None) -> TrainResult:
    import torch

    from .progress import progress

    distributed = D.init()
    world, rank = D.world_size(), D.rank()
    seed_everything(s.seed)
    dev = D.device()
    model.to(dev)
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False)
    params = params or [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    per_rank = math.ceil(n_train / world)
    steps_per_epoch = math.ceil(per_rank / (s.batch_size * s.grad_accum))
    total = steps_per_epoch * s.epochs
    if s.max_steps:
        total = min(total, s.max_steps)
    warm = max(1, int(total * s.warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min((k + 1) / warm, max(0.0, (total - k) / max(1, total - warm))))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if (s.mixed_precision and dev.type == "cuda")
                else torch.autocast("cpu", enabled=False))
    rng = np.random.default_rng(s.seed)
    best_acc, best_epoch, best_state = -1.0, 0, None
    history = []
    done = 0
    with progress(desc, total if D.is_main() else 0) as advance:
        for epoch in range(1, s.epochs + 1):
            net.train()
            order = rng.permutation(n_train)  # same on every rank (same seed); each takes its shard
            order = np.resize(order, per_rank * world)[rank::world]
            losses = []
            micro = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)]
            for step in range(0, len(micro), s.grad_accum):
                if done >= total:
                    break
                group = micro[step : step + s.grad_accum]
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for k, idx in enumerate(group):
                    sync = (k == len(group) - 1) or not distributed
                    ctx = net.no_sync() if (distributed and not sync) else _null()
                    with ctx, autocast:
                        loss = batch_loss(net, idx) / len(group)
                    finite = bool(torch.isfinite(loss).item())
                    if not D.all_true(finite):
                        last = f"epoch {best_epoch}" if best_state is not None else "none (diverged in the first epoch)"
                        raise TrainingDiverged(f"training loss became non-finite at epoch {epoch}, step {step // s.grad_accum + 1}; "
                                               f"last good checkpoint: {last}; lower the learning rate (lr={s.lr:g})")
                    with ctx:
                        loss.backward()
                    step_loss += float(loss.item())
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                opt.step()
                sched.step()
                done += 1
                if after_step is not None:
                    after_step()
                losses.append(step_loss)
                advance(1)
            net.eval()
            entry = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None}
            if evaluate is not None:
                with torch.no_grad():
                    acc = float(evaluate(model))
                entry["val_accuracy"] = acc
                if acc > best_acc:
                    best_acc, best_epoch = acc, epoch
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
            history.append(entry)
            if done >= total:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = s.epochs
    if distributed:
        _check_replicas_agree(model)
    model.eval()
    model.to("cpu")
    return TrainResult(best_epoch=best_epoch, best_val_accuracy=best_acc if best_acc >= 0 else None,
                       history=history, world_size=world)


def _check_replicas_agree(model) -> None:
    """DDP keeps replicas identical; verify it before rank 0 writes the artifact."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        local = local.to(D.device()) if torch.cuda.is_available() else local
        gathered = [torch.zeros_like(local) for _ in range(D.world_size())]
        dist.all_gather(gathered, local)
    values = [float(g.item()) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise StageError(f"distributed replicas diverged (parameter sums {values}); this is a bug — please report it")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
