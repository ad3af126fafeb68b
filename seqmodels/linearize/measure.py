"""What the linearization report measures beside held-out perplexity (seqmodels.train.evaluation
`evaluate_lm`): MQAR accuracy, decoding-state bytes at a context length, and the branch ablation
(docs/architecture.md §7).

The ablation switches off the linear ("global") branch of every student mixer through its
`linear_branch_enabled` attribute (Lizard: ŷ_global := 0; LoLCATs: linear scores dropped from
numerator and denominator); if zeroing it does not raise perplexity, the window branch does all
the work and the student is not really linear-cost.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from seqmodels.model import SeqLM
from seqmodels.state import state_nbytes
from seqmodels.train.evaluation import evaluate_accuracy


def mqar_accuracy(model: SeqLM, num_kv_pairs: int = 4, seq_len: int = 64, num_examples: int = 64,
                  seed: int = 0, batch_size: int = 16) -> float:
    """Fraction of MQAR queries (seqmodels.data.mqar, over the model's vocab) answered by argmax."""
    from seqmodels.data.mqar import mqar

    ids, labels = mqar(model.cfg.vocab_size, seq_len, num_kv_pairs, num_examples, seed=seed)
    return evaluate_accuracy(model, {"input_ids": ids, "labels": labels}, batch_size, model.embed.weight.device)


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
