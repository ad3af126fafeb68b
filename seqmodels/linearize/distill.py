"""Stage 2, distillation: the whole student fine-tuned on `stage2.loss` through LoRA adapters (`peft`) on the
attention projections.

    kl      L = kl_weight · τ² · mean_t KL(softmax(z_t^T / τ) ‖ softmax(z_t^S / τ))   (our default)
    ce      L = ce_weight · CE(z^S, labels)            (next-token LM loss; no teacher forward while training)
    kl+ce   the sum of both
mean over positions with labels != -100. Which paper uses which: LoLCATs' released code (arXiv 2410.10254 §3.2)
fine-tunes with next-token cross-entropy through LoRA; Lizard (arXiv 2507.09025 §3, LoRA rank 8, α 16 on W_Q, W_K,
W_V) describes language-model fine-tuning; KL to the teacher is this project's default (docs/linearize.md).
The teacher is frozen and held outside the module tree. `apply_lora` wraps the student with peft's LoraModel (only
adapters train, plus any parameter named in `extra_trainable`); `merge_lora` folds the adapters back into plain
nn.Linear weights for export.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.model import SeqLM, upcast

STAGE2_LOSSES = ("kl", "ce", "kl+ce")


def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: Optional[torch.Tensor] = None,
                       temperature: float = 1.0) -> torch.Tensor:
    """τ² · mean over positions of KL(softmax(t/τ) ‖ softmax(s/τ)); logits [B, T, V], mask [B, T] bool."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ")
    log_p = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    log_q = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [B, T]
    if mask is not None:
        kl = kl[mask]
    return kl.mean() * temperature**2


def apply_lora(student: SeqLM, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
               extra_trainable: Sequence[str] = ()) -> nn.Module:
    """peft LoraModel around `student` (modified in place): adapters on the mixers' `target_modules`;
    every other parameter frozen except those whose name contains one of `extra_trainable`."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    allowed = {"q_proj", "k_proj", "v_proj", "o_proj"}
    bad = sorted(set(target_modules) - allowed)
    if bad or not target_modules:
        raise ValueError(f"lora target_modules must be a non-empty subset of {sorted(allowed)}, got {list(target_modules)}")
    pattern = r"blocks\.\d+\.mixer\.(" + "|".join(target_modules) + ")"  # peft: a string is a full-match regex
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=pattern)
    wrapped = LoraModel(student, config, "default")
    for name, param in student.named_parameters():
        if any(key in name for key in extra_trainable):
            param.requires_grad_(True)
    return wrapped


def merge_lora(wrapped: nn.Module) -> SeqLM:
    """The plain SeqLM with the LoRA updates merged into the projection weights."""
    return wrapped.merge_and_unload()


class Distiller(nn.Module):
    """forward(input_ids, labels) -> the `loss` (kl | ce | kl+ce) of the student, weighted by kl_weight / ce_weight
    (each weights its term when `loss` names it); `student` is the trainable module (a SeqLM or its peft wrapper),
    the teacher is kept outside the module tree and runs only when the loss has a KL term."""

    def __init__(self, student: nn.Module, teacher: SeqLM, loss: str = "kl", kl_weight: float = 1.0,
                 ce_weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        if loss not in STAGE2_LOSSES:
            raise ValueError(f"stage2.loss must be one of {list(STAGE2_LOSSES)}, got {loss!r}")
        if kl_weight <= 0 or ce_weight <= 0:
            raise ValueError(f"stage2.kl_weight and stage2.ce_weight must be > 0, got {kl_weight}, {ce_weight}")
        if temperature <= 0:
            raise ValueError(f"stage2.temperature must be > 0, got {temperature}")
        self.student = student
        self._teacher = [teacher]
        self.loss = loss
        self.kl_weight, self.ce_weight, self.temperature = kl_weight, ce_weight, temperature
        self.terms = tuple(loss.split("+"))
        self._sums = {"kl": 0.0, "ce": 0.0}
        self._count = 0

    @property
    def teacher(self) -> SeqLM:
        return self._teacher[0]

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if "ce" in self.terms and labels is None:
            raise ValueError(f"stage2.loss {self.loss!r} has a cross-entropy term: the batches need labels")
        out = self.student(input_ids, labels=labels)
        loss, kl = 0.0, None
        if "kl" in self.terms:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids).logits
            mask = None if labels is None else labels != -100
            kl = kl_teacher_student(teacher_logits, out.logits, mask, self.temperature)
            loss = loss + self.kl_weight * kl
        if "ce" in self.terms:
            loss = loss + self.ce_weight * out.loss
        if self.training:
            self._sums["kl"] += float(kl.detach()) if kl is not None else 0.0
            self._sums["ce"] += float(out.loss.detach()) if out.loss is not None else float("nan")
            self._count += 1
        return loss

    def pop_train_means(self) -> Optional[dict]:
        """Mean CE, and KL when the loss has it, over the training forwards since the last call (None if none)."""
        if self._count == 0:
            return None
        means = {k: v / self._count for k, v in self._sums.items() if k == "ce" or "kl" in self.terms}
        self._sums = {"kl": 0.0, "ce": 0.0}
        self._count = 0
        return means
