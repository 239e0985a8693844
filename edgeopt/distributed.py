"""torchrun support: process group setup, rank queries, and rank-0-only artifact writing.

Under ``torchrun --nproc_per_node N`` the environment holds RANK / WORLD_SIZE / LOCAL_RANK;
training stages then run DistributedDataParallel (gloo on CPU, nccl on GPU), shard the data
by rank, and only rank 0 writes artifacts while the others wait at a barrier.
"""
from __future__ import annotations

import os
from typing import Optional


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init() -> bool:
    """Initialise the process group when launched by torchrun; True when distributed."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device())
        dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def all_true(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (used to stop all ranks together)."""
    if world_size() <= 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device() if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_object(obj: Optional[object]) -> object:
    if world_size() <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
