"""Process context of a command: single process, or one of WORLD_SIZE processes started by torchrun (gloo on CPU,
nccl on GPUs), on one machine or several. Rank 0 writes every file.

`train` (each process draws, mines and attacks its own batch, DistributedDataParallel averages the gradients),
`evaluate` (each process attacks its part of the query batches, rank 0 gathers the per-query values) and `index`
(each process embeds its part of the gallery, rank 0 assembles and publishes) all start here.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from retrieval.errors import UserError

T = TypeVar("T")


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

    def part(self, n: int) -> range:
        """This process's contiguous share of n items (the first n % world_size processes take one more)."""
        size, extra = divmod(n, self.world_size)
        first = self.rank * size + min(self.rank, extra)
        return range(first, first + size + (self.rank < extra))

    def agreed(self, compute: Callable[[], T]) -> T:
        """Rank 0's `compute()` on every process (computed there only: a folder listing, an index's settings); a
        UserError it raises is raised on every process, so all of them stop with the same one line."""
        if not self.distributed:
            return compute()
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome = [(True, compute())]
            except UserError as exc:
                outcome = [(False, str(exc))]
        dist.broadcast_object_list(outcome, src=0, device=self.device if dist.get_backend() == "nccl" else None)
        done, value = outcome[0]
        if not done:
            raise UserError(value)
        return value

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


@contextlib.contextmanager
def started(device: str) -> Iterator[Processes]:
    """start(device) for the duration of a command, then stop."""
    processes = start(device)
    try:
        yield processes
    finally:
        stop(processes)
