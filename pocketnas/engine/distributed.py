"""torchrun integration: process group set-up from the environment, rank-0 helpers, averaging."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import resolve_device


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    process_group: bool = False  # joined a process group (every torchrun launch, one process too)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Under torchrun: the model is wrapped in DDP and gradients are all-reduced, also for one process (so that
        a one-GPU machine runs the same NCCL path as many)."""
        return self.world_size > 1 or self.process_group


def launched_by_torchrun() -> bool:
    """torchrun (and ``torch.distributed.run``) sets the rendezvous variables of ``init_method="env://"``."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


def setup(device: str = "auto") -> DistEnv:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; join the process group (NCCL on CUDA, gloo on CPU) whenever
    torchrun launched the process, one process included."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(resolve_device(device, local))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    group = world > 1 or launched_by_torchrun()
    if group and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local, dev, process_group=group)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_across(env: DistEnv, value: torch.Tensor) -> torch.Tensor:
    if not env.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / env.world_size


def average_gradients(env: DistEnv, params) -> None:
    """All-reduce and average the gradients of ``params`` (for parameters outside a DDP wrapper, e.g. alphas)."""
    if not env.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= env.world_size


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
