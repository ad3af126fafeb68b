"""What the linearization report measures: held-out perplexity, MQAR accuracy, decoding-state
bytes at a context length, and the branch ablation (docs/architecture.md §7).

The ablation switches off the linear ("global") branch of every student mixer through its
`linear_branch_enabled` attribute (Lizard: ŷ_global := 0; LoLCATs: linear scores dropped from
numerator and denominator); if zeroing it does not raise perplexity, the window branch does all
the work and the student is not really linear-cost.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import torch

from seqmodels.model import SeqLM
from seqmodels.state import state_nbytes


@torch.no_grad()
def perplexity(model: SeqLM, batches: Iterable[dict], max_batches: int | None = None) -> tuple[float, int]:
    """(exp of the token-weighted mean next-token CE, tokens scored) over `batches`."""
    model_was_training = model.training
    model.eval()
    device = model.embed.weight.device
    total, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        n = int((labels != -100).sum())
        total += float(model(ids, labels=labels).loss) * n
        tokens += n
    model.train(model_was_training)
    if tokens == 0:
        raise ValueError("perplexity got no scored tokens")
    return math.exp(min(total / tokens, 80.0)), tokens


@torch.no_grad()
def mqar_accuracy(model: SeqLM, num_kv_pairs: int = 4, seq_len: int = 64, num_examples: int = 64,
                  seed: int = 0, batch_size: int = 16) -> float:
    """Fraction of MQAR queries (seqmodels.data.mqar, over the model's vocab) answered by argmax."""
    from seqmodels.data.mqar import mqar

    ids, labels = mqar(model.cfg.vocab_size, seq_len, num_kv_pairs, num_examples, seed=seed)
    device = model.embed.weight.device
    correct, total = 0, 0
    for start in range(0, num_examples, batch_size):
        x, y = ids[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        pred = model(x).logits.argmax(-1)
        mask = y != -100
        correct += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return correct / total


@torch.no_grad()
def decode_state_bytes(model: SeqLM, context: int) -> int:
    """Bytes of the decoding state (batch 1, the model's dtype) after a prefill of `context` tokens.
    Each block's mixer is run alone on zero hidden states (the state's size does not depend on the
    values), so this costs n_layers mixer forwards, no full model."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    weight = model.embed.weight
    x = torch.zeros(1, context, model.cfg.d_model, device=weight.device, dtype=weight.dtype)
    total = 0
    for block in model.blocks:
        _, state = block.mixer(x, return_state=True)
        total += state_nbytes(state)
    return total


@contextlib.contextmanager
def linear_branch_disabled(model: SeqLM) -> Iterator[int]:
    """Within the block, every mixer with `linear_branch_enabled` runs without its linear branch;
    yields how many mixers were switched. No such mixer -> ValueError."""
    mixers = [b.mixer for b in model.blocks if hasattr(b.mixer, "linear_branch_enabled")]
    if not mixers:
        names = sorted({type(b.mixer).__name__ for b in model.blocks})
        raise ValueError(f"no mixer of {names} has a linear_branch_enabled switch: the branch ablation needs one")
    before = [m.linear_branch_enabled for m in mixers]
    try:
        for m in mixers:
            m.linear_branch_enabled = False
        yield len(mixers)
    finally:
        for m, value in zip(mixers, before):
            m.linear_branch_enabled = value
