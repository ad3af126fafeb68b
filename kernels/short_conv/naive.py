"""Depthwise causal short convolution, written as a plain loop over taps (the definition).

y_t = bias + sum_{i<K} weight[:, i] * x_{t-i}, with x_{t-i} taken from `initial_state` (the K-1
inputs before the sequence, oldest first) or zero before the start. Layout [B, T, D] (channel op).
Used by tests as the oracle (run it in float64).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._conv_tail import with_past


def short_conv_naive(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, initial_state: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """x [B, T, D], weight [D, K], bias [D] or None, initial_state [B, K-1, D] or None -> y [B, T, D]."""
    B, T, D = x.shape
    K = weight.shape[1]
    full = with_past(x, initial_state, K - 1)  # position t of x sits at index t + K - 1
    y = torch.zeros_like(x)
    for t in range(T):
        for i in range(K):
            y[:, t] += weight[:, i] * full[:, t + K - 1 - i]
    if bias is not None:
        y = y + bias
    return y
