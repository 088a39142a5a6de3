"""Running members in parallel processes under torchrun (one node or several).

    torchrun --nproc-per-node=K -m training --data DIR --members M --out RUN     # one machine
    twin train --nproc K ...                                                     # the same, launched for you
    torchrun --nnodes=N --node-rank=R --nproc-per-node=K \\
             --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT -m training ...       # several machines

Every process loads the data, trains members rank, rank + world, ... into the shared run directory
(on a file system every node sees), and waits at a barrier; rank 0 then selects and scores the ensemble.
CPU processes use gloo and split the cores; GPU processes use NCCL, one GPU per local rank.
"""

from __future__ import annotations

import datetime as dt
import os

import torch

__all__ = ["init_from_env", "is_rank_zero", "shutdown"]


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment; returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch.distributed.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}" if device == "cuda" else device
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    # Members can train for hours; the barrier after them must not time out.
    torch.distributed.init_process_group(backend, timeout=dt.timedelta(hours=48))
    return device


def is_rank_zero() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
