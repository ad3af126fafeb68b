"""Process-group set-up for the recipes: the same code under `deepspeed` (N processes) and plain
`python` (one process).

`deepspeed.init_distributed` falls back to MPI discovery (and fails without mpi4py) unless
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are set, so a plain `python` run
gets single-process defaults first (docs/architecture.md §7). The backend is the accelerator's (gloo on CPU,
nccl on CUDA) unless `backend` is given.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_single_process_env() -> None:
    """Defaults for a one-process run (kept if a launcher already set them)."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init_distributed(backend: Optional[str] = None) -> DistInfo:
    """Initialize torch.distributed through DeepSpeed (idempotent) and return this process's ranks."""
    import deepspeed
    import torch.distributed as dist

    set_single_process_env()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float) -> float:
    """max over ranks (used for "any rank saw a non-finite loss")."""
    return _all_reduce(value, "max")


def all_reduce_mean(value: float) -> float:
    return _all_reduce(value, "sum") / world_size()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place on the tensor's device; no host read (the caller reads once, later)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _all_reduce(value: float, op: str) -> float:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t.item())


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
