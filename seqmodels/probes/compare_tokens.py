"""Which held-out tokens the family comparison splits the loss on: AR hits (Zoology, Arora et
al. 2023, arXiv 2312.04927 §3), their frequency in the training tokens, and the summed loss of a
model on each group.

AR hit: in a window w_0 .. w_n (the model predicts w_t from w_0 .. w_{t-1}), the target w_t is an
AR hit when the bigram (w_{t-1}, w_t) occurred earlier in the same window: some j < t - 1 with
w_j = w_{t-1} and w_{j+1} = w_t. The earlier occurrence is then entirely in the model's context,
so recalling it predicts w_t.

Frequency: Zoology keeps the AR hits whose bigram is rare in the training data (a model cannot
predict those from memorized bigram statistics). Here a bigram's count is its number of
occurrences as (input token, target) in exactly the training tokens the models saw, and a "rare
AR hit" is an AR hit whose bigram count is below `rare_below`; both groups are reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

GROUPS = ("all", "ar", "ar_rare", "other")  # other: the tokens that are not AR hits


def bigram_codes(windows: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, n] token windows -> [B, n - 1] int64 codes w_{t-1} * vocab_size + w_t of each (input, target) pair."""
    windows = windows.long()
    return windows[:, :-1] * vocab_size + windows[:, 1:]


def ar_hit_mask(windows: torch.Tensor) -> torch.Tensor:
    """[B, n] token windows -> bool [B, n - 1], aligned with the targets windows[:, 1:]: entry t - 1
    is True when (w_{t-1}, w_t) occurred earlier in the row, i.e. it is not the first occurrence
    of its bigram. A stable sort groups equal bigrams in position order; all but the first of
    each group are hits."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [batch, n >= 2] token ids, got shape {tuple(windows.shape)}")
    codes = bigram_codes(windows, int(windows.max()) + 1)
    ordered, order = torch.sort(codes, dim=1, stable=True)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return torch.empty_like(repeat).scatter_(1, order, repeat)


@dataclass
class BigramCounts:
    """Occurrences of each (input, target) bigram in a set of training batches."""

    codes: np.ndarray  # sorted unique bigram codes
    counts: np.ndarray
    vocab_size: int
    tokens: int  # (input, target) pairs counted

    @classmethod
    def from_batches(cls, batches: Iterable[dict], vocab_size: int) -> "BigramCounts":
        """Count the pairs (input_ids[t], labels[t]) of every batch (labels -100 skipped)."""
        chunks = []
        for batch in batches:
            ids, labels = batch["input_ids"].long(), batch["labels"].long()
            keep = labels != -100
            chunks.append((ids[keep] * vocab_size + labels[keep]).numpy())
        if not chunks:
            raise ValueError("no training batch to count bigrams in")
        all_codes = np.concatenate(chunks)
        codes, counts = np.unique(all_codes, return_counts=True)
        return cls(codes, counts, vocab_size, int(all_codes.size))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Counts of the given codes (0 for a bigram never seen), same shape."""
        if len(self.codes) == 0:
            return torch.zeros_like(codes)
        flat = codes.reshape(-1).numpy()
        where = np.minimum(np.searchsorted(self.codes, flat), len(self.codes) - 1)
        out = np.where(self.codes[where] == flat, self.counts[where], 0)
        return torch.from_numpy(out).reshape(codes.shape)


def token_groups(windows: torch.Tensor, counts: BigramCounts, rare_below: int) -> dict[str, torch.Tensor]:
    """{group: bool [B, n - 1] over the targets} for GROUPS."""
    ar = ar_hit_mask(windows)
    rare = counts.lookup(bigram_codes(windows, counts.vocab_size)) < rare_below
    return {"all": torch.ones_like(ar), "ar": ar, "ar_rare": ar & rare, "other": ~ar}


@torch.no_grad()
def split_loss(model, batches: Iterable[dict], counts: BigramCounts, rare_below: int) -> dict:
    """{group: {"loss_sum", "tokens"}}: the model's next-token cross-entropy (nats, float64) summed
    over each group's targets of aligned input_ids / labels batches (no -100 labels)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = {g: 0.0 for g in GROUPS}
    tokens = {g: 0 for g in GROUPS}
    try:
        for batch in batches:
            ids, labels = batch["input_ids"], batch["labels"]
            if bool((labels == -100).any()):
                raise ValueError("split_loss scores whole windows: the batches must have no -100 labels")
            logits = model(ids.to(device)).logits.double()
            loss = F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), reduction="none")
            loss = loss.view(labels.shape).cpu()
            groups = token_groups(torch.cat([ids, labels[:, -1:]], dim=1), counts, rare_below)
            for g, mask in groups.items():
                sums[g] += float(loss[mask].sum())
                tokens[g] += int(mask.sum())
    finally:
        model.train(was_training)
    if tokens["all"] == 0:
        raise ValueError("no held-out tokens to score")
    return {g: {"loss_sum": sums[g], "tokens": tokens[g]} for g in GROUPS}
