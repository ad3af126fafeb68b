"""One-token step of the causal long convolution (decoding with a bounded input tail).

State `tail` [B, L-1, D]: the previous L-1 inputs, oldest first. y_t = kernel[:, 0] x_t +
sum_{1<=l<L} kernel[:, l] tail[:, L-1-l]. Cost O(L*D) per token, state constant in T.
"""
from __future__ import annotations

from typing import Tuple

import torch


def long_conv_recurrent_step(x_t: torch.Tensor, kernel: torch.Tensor, tail: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x_t [B, D], kernel [D, L], tail [B, L-1, D] -> (y_t [B, D], new tail [B, L-1, D])."""
    window = torch.cat([tail, x_t.unsqueeze(1)], dim=1)  # [B, L, D], oldest first
    y = torch.einsum("bld,dl->bd", window, kernel.flip(-1))
    return y, window[:, 1:]
