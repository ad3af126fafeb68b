"""Stage 1, attention transfer: each student mixer learns to reproduce its teacher attention layer.

LoLCATs (arXiv 2410.10254 §3.1, Eq. 7) / Lizard (arXiv 2507.09025 §3): for layer l with input
hidden states h_l (the teacher's own, after the block's pre-norm), the loss is
    L = Σ_l MSE(student_l(h_l), attention_l(h_l)),
teacher frozen. Both run side by side in ONE teacher forward: the teacher path is computed under
no_grad and continues with the teacher's output, so autograd keeps only each student mixer's
own activations (no graph through the teacher, no stored per-layer teacher activations).

`AttentionTransfer` is the module the trainer's engine wraps: its parameters are the student
mixers only (the teacher is held outside the module tree: not checkpointed, not optimized).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.linearize.teacher import check_teacher
from seqmodels.model import SeqLM, upcast


class AttentionTransfer(nn.Module):
    """forward(input_ids) -> Σ_l per-layer MSE; the last per-layer values are in `layer_mse`."""

    def __init__(self, teacher: SeqLM, mixers: nn.ModuleList):
        super().__init__()
        check_teacher(teacher)
        if len(mixers) != len(teacher.blocks):
            raise ValueError(f"{len(mixers)} student mixers for {len(teacher.blocks)} teacher blocks")
        self.mixers = mixers
        self._teacher = [teacher]  # a list: kept out of parameters()/state_dict()
        self.layer_mse: Optional[torch.Tensor] = None  # [n_layers], detached, of the last forward
        self._sum = torch.zeros(len(mixers), dtype=torch.float64)
        self._count = 0

    @property
    def teacher(self) -> SeqLM:
        return self._teacher[0]

    def layer_losses(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[n_layers] MSE(student_l(h_l), teacher_l(h_l)), differentiable in the student mixers."""
        teacher = self.teacher
        teacher._check_ids(input_ids, "input_ids", 2)
        with torch.no_grad():
            x = teacher.embed(input_ids)
        losses = []
        for block, student in zip(teacher.blocks, self.mixers):
            with torch.no_grad():
                h = block.mixer_norm(x)
                y_teacher, _ = block.mixer(h)
            weight = next(student.parameters())
            y_student, _ = student(h.to(weight.dtype))
            losses.append(F.mse_loss(upcast(y_student), upcast(y_teacher).to(upcast(y_student).dtype)))
            with torch.no_grad():
                x = block._mix(x, y_teacher)
        return torch.stack(losses)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        losses = self.layer_losses(input_ids)
        self.layer_mse = losses.detach()
        if self.training:
            self._sum += self.layer_mse.double().cpu()
            self._count += 1
        return losses.sum()

    def pop_train_means(self) -> Optional[list[float]]:
        """Mean per-layer MSE over the training forwards since the last call (None if none)."""
        if self._count == 0:
            return None
        means = (self._sum / self._count).tolist()
        self._sum.zero_()
        self._count = 0
        return means


@torch.no_grad()
def layer_mse(teacher: SeqLM, mixers: nn.ModuleList, batches: Iterable[dict]) -> list[float]:
    """Mean per-layer transfer MSE of `mixers` against `teacher` over `batches` (eval mode)."""
    module = AttentionTransfer(teacher, mixers)
    was_training = mixers.training
    mixers.eval()
    total, count = None, 0
    for batch in batches:
        ids = batch["input_ids"].to(teacher.embed.weight.device)
        losses = module.layer_losses(ids).double().cpu()
        total = losses if total is None else total + losses
        count += 1
    mixers.train(was_training)
    if count == 0:
        raise ValueError("layer_mse got no batches")
    return (total / count).tolist()
