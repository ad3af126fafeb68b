"""Mega's damped EMA as a plain token loop over the recurrence (the definition; float64 test oracle).

h_t = p β x_t + q h_{t-1}, y_t = N^{-1/2} Σ_n γ_n h_{t,n} (arXiv 2209.10655 §3.1, App. A), one
recurrent.ema_recurrent_step per token. Layout [B, T, D]; state h [B, D, N].
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .recurrent import ema_recurrent_step


def ema_naive(
    x: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token loop: x [B, T, D] -> (y [B, T, D], final h [B, D, N]). The definition (float64 oracle)."""
    B, T, D = x.shape
    h = x.new_zeros(B, D, p.shape[1], dtype=p.dtype) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        y, h = ema_recurrent_step(x[:, t], p, log_q, beta, gamma, h)
        ys.append(y)
    return torch.stack(ys, 1) if ys else x.clone(), h
