"""Held-out evaluation, token-weighted everywhere: a mean loss is the sum of the per-token losses
over the number of scored tokens (labels != -100, or one per example for class labels [B]), an
accuracy is the fraction of scored tokens predicted exactly, and perplexity is exp(mean loss).

Batches of different sizes therefore weigh by their tokens, not one vote each; across ranks the
sums are added before the division.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from seqmodels.data.tensors import eval_batches
from seqmodels.train.distributed import all_reduce_mean

IGNORE_INDEX = -100
MAX_LOG_PERPLEXITY = 80.0  # exp(80) ~ 5.5e34: a diverged model reports a huge number, not an overflow


def scored_tokens(batch: dict) -> int:
    """Positions a batch's loss averages over: labels != -100 (all input tokens without labels)."""
    labels = batch.get("labels")
    if labels is None:
        return int(batch["input_ids"].numel())
    return int((labels != IGNORE_INDEX).sum())


def perplexity(mean_loss: float) -> float:
    """exp(token-weighted mean next-token loss), capped at exp(MAX_LOG_PERPLEXITY)."""
    return math.exp(min(mean_loss, MAX_LOG_PERPLEXITY))


class TokenWeightedMean:
    """Sum of per-token losses and scored tokens; `add` takes a batch's mean loss and its token
    count and keeps the sum on the loss's device (no host sync per batch)."""

    def __init__(self):
        self.total: torch.Tensor | float = 0.0
        self.tokens = 0

    def add(self, mean_loss: torch.Tensor, tokens: int) -> None:
        self.total = self.total + mean_loss.detach().double() * tokens
        self.tokens += tokens

    def local(self) -> Optional[float]:
        """This process's mean (None before any scored token)."""
        return float(self.total) / self.tokens if self.tokens else None

    def all_ranks(self) -> Optional[float]:
        """The mean over every rank's tokens (every rank must call); None when no rank scored any."""
        tokens = all_reduce_mean(self.tokens)
        return all_reduce_mean(float(self.total)) / tokens if tokens else None


@dataclass
class LMEval:
    loss: float  # token-weighted mean next-token cross-entropy (nats)
    ppl: float  # perplexity(loss)
    tokens: int  # scored tokens
    batches: int


@torch.no_grad()
def evaluate_lm(model, batches: Iterable[dict], max_batches: Optional[int] = None) -> LMEval:
    """Run a causal LM (`model(input_ids).logits`) over batches of aligned input_ids / labels and
    score every label != -100 in float64; the model is in eval mode for the pass, then restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens, count = 0.0, 0, 0
    try:
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            logits = model(ids).logits.double()
            total += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                           reduction="sum"))
            tokens += scored_tokens(batch)
            count += 1
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("nothing to score: no batch with a label != -100")
    loss = total / tokens
    return LMEval(loss=loss, ppl=perplexity(loss), tokens=tokens, batches=count)


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, scored): argmax(logits, -1) == labels over the positions where labels != -100.

    MQAR: logits [B, T, V], labels [B, T] with -100 except at answer positions (an answer counts
    only if predicted exactly). Classification (LRA): logits [B, C], labels [B]."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: "
                         "expected logits [..., classes] with labels [...]")
    mask = labels != IGNORE_INDEX
    correct = (logits.argmax(-1) == labels) & mask
    return int(correct.sum()), int(mask.sum())


@torch.no_grad()
def evaluate_accuracy(model, tensors: dict, batch_size: int, device=None) -> float:
    """Fraction of scored positions (see accuracy_counts) predicted exactly by `model(**inputs)` over
    all of `tensors` (input_ids, labels and optional attention_mask), in batches of batch_size; eval
    mode for the pass, then restored."""
    was_training = model.training
    model.eval()
    correct = scored = 0
    try:
        for batch in eval_batches(tensors, batch_size)():
            batch = {k: v.to(device) if device is not None else v for k, v in batch.items()}
            labels = batch.pop("labels")
            c, n = accuracy_counts(model(**batch).logits.float(), labels)
            correct, scored = correct + c, scored + n
    finally:
        model.train(was_training)
    if scored == 0:
        raise ValueError("no labelled positions to score (every label is -100)")
    return correct / scored
