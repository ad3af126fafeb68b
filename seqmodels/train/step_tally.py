"""An optimizer step's loss, token count and non-finite flags, kept on the device and read once.

On CUDA every read of a tensor's value (`float`, `bool`, `.item()`, ...) waits for the device.
The training loop reads one packet per step: the step's mean loss, its token count and one
non-finite flag per (micro-batch, rank), summed over ranks by one all-reduce, with the local
gradient norm appended. The loss is summed in float64 in micro-batch order, so the mean equals
the Python mean of the losses' floats bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from seqmodels.train.distributed import DistInfo, all_reduce_sum_


@dataclass(frozen=True)
class StepReading:
    loss: float  # mean over the step's micro-batches and over ranks
    tokens: float  # summed over ranks
    grad_norm: Optional[float]
    nonfinite: list[tuple[int, list[int]]]  # (micro-batch index, ranks) of each non-finite loss, in order


def _flags_over_ranks(flags: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """[n] booleans of this rank -> [n, world_size] float64 with this rank's column set, for a sum."""
    table = torch.zeros(flags.shape[0], dist_info.world_size, dtype=torch.float64, device=flags.device)
    table[:, dist_info.rank] = flags
    return table


def _ranks(row: list[float]) -> list[int]:
    return [rank for rank, flag in enumerate(row) if flag]


def nonfinite_ranks(loss: torch.Tensor, dist_info: DistInfo) -> list[int]:
    """The ranks whose `loss` is NaN/inf: one all-reduce and one read (for a check that must come
    before the backward)."""
    table = all_reduce_sum_(_flags_over_ranks(~torch.isfinite(loss.detach()).reshape(1), dist_info))
    return _ranks(table.tolist()[0])


class StepTally:
    def __init__(self, device, dist_info: DistInfo):
        self.dist = dist_info
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.flags: list[torch.Tensor] = []
        self.tokens = 0

    @property
    def micro_batches(self) -> int:
        return len(self.flags)

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        value = loss.detach()
        self.flags.append(~torch.isfinite(value))
        self.loss_sum = self.loss_sum + value.double()
        self.tokens += tokens

    def read(self, grad_norm: Optional[torch.Tensor] = None) -> StepReading:
        """The step's one all-reduce and one device-to-host transfer."""
        count, world = self.micro_batches, self.dist.world_size
        device = self.loss_sum.device
        packet = torch.cat([
            (self.loss_sum / count).reshape(1),
            torch.full((1,), float(self.tokens), dtype=torch.float64, device=device),
            _flags_over_ranks(torch.stack(self.flags), self.dist).reshape(-1),
        ])
        all_reduce_sum_(packet)
        if grad_norm is not None:
            packet = torch.cat([packet, grad_norm.detach().to(packet).reshape(1)])
        values = packet.tolist()
        flags = values[2:2 + count * world]
        nonfinite = [(micro, _ranks(flags[micro * world:(micro + 1) * world])) for micro in range(count)]
        return StepReading(values[0] / world, values[1], values[-1] if grad_norm is not None else None,
                           [(micro, ranks) for micro, ranks in nonfinite if ranks])
