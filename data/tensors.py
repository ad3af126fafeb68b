"""In-memory datasets for the probes (MQAR, LRA): a resumable, rank-aware batch loader over
tensors, and in-order evaluation batches (scored by seqmodels.train.evaluation).

`TensorLoader` is the trainer's train-loader contract (an iterable of batch dicts with
`state_dict()` / `load_state_dict()`, seqmodels.train.trainer): one pass is one epoch of
shuffled, full micro-batches (the tail that does not fill a batch is dropped); the permutation
of epoch e comes from `seed + e`, so a resumed loader continues with exactly the batches an
uninterrupted run would have seen. With `world_size > 1` each rank takes every world_size-th
batch of the same permutation (data-parallel training).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch


class TensorLoader:
    def __init__(self, tensors: dict, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        lengths = {name: len(t) for name, t in tensors.items()}
        if not tensors or len(set(lengths.values())) != 1:
            raise ValueError(f"TensorLoader needs tensors of one common length, got lengths {lengths}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.tensors = dict(tensors)
        self.size = next(iter(lengths.values()))
        if self.size < batch_size * world_size:
            raise ValueError(
                f"{self.size} examples cannot fill one batch of {batch_size} per rank on {world_size} rank(s)"
            )
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.position = 0, 0  # position: batches of this epoch already yielded on this rank

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[dict]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.position < self.batches_per_epoch:
            start = (self.position * self.world_size + self.rank) * self.batch_size
            index = order[start:start + self.batch_size]
            self.position += 1
            yield {name: t[index] for name, t in self.tensors.items()}
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "size", "batch_size", "world_size"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]}, this loader {key}={mine[key]}: "
                                 "the checkpoint belongs to another data or batch setting")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_batches(tensors: dict, batch_size: int, limit: Optional[int] = None):
    """A factory of in-order batches over `tensors` (the trainer's `eval_batches` argument)."""
    size = len(next(iter(tensors.values())))
    stop = size if limit is None else min(size, limit)

    def batches():
        for start in range(0, stop, batch_size):
            yield {name: t[start:min(start + batch_size, stop)] for name, t in tensors.items()}

    return batches
