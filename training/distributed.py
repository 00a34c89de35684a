"""Process context of a training run: single process, or one of WORLD_SIZE processes started by torchrun.

Under torchrun each process draws, mines and attacks its own batch (as the reference's DDP runs) and DistributedDataParallel
averages the gradients; gloo on CPU, nccl on GPUs. Rank 0 writes every file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from retrieval.errors import UserError


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, flag: bool) -> bool:
        """Rank 0's `flag` on every process, so that all of them stop at the same iteration."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(value, src=0)
        return bool(value.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (on every process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto | cpu | cuda -> a torch device; asking for CUDA without one is a UserError."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"device {name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def start(device: str) -> Processes:
    """Resolve the device and, when WORLD_SIZE > 1, join the process group from torchrun's environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", init_method="env://")
    return Processes(rank=rank, world_size=world_size, device=resolved)


def stop(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()
