"""Causal long convolution, direct O(T*L) form (the definition, test oracle).

y_t = sum_{l<L} kernel[:, l] x_{t-l}; inputs before the sequence come from `initial_state`
(the L-1 previous inputs, oldest first) or are zero. Layout [B, T, D] (channel op).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._conv_tail import with_past


def long_conv_direct(x: torch.Tensor, kernel: torch.Tensor, initial_state: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [B, T, D], kernel [D, L], initial_state [B, L-1, D] or None -> y [B, T, D]; one shifted product per tap."""
    B, T, D = x.shape
    L = kernel.shape[1]
    full = with_past(x, initial_state, L - 1)  # x_t sits at index t + L - 1
    y = torch.zeros_like(x)
    for lag in range(L):
        y = y + kernel[:, lag] * full[:, L - 1 - lag : L - 1 - lag + T]
    return y
