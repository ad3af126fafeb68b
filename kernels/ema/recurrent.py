"""Mega's damped multi-dimensional EMA, one token at a time (decoding step and the naive token loop).

Per channel d and expansion n (arXiv 2209.10655 §3.1, Eqs. 2-3 with App. A's damping):
    h_t = p β x_t + q h_{t-1},   q = 1 - p·a = exp(log_q)
    y_t = N^{-1/2} Σ_n γ_n h_{t,n}
The N^{-1/2} readout scale is where Mega's code puts it (γ·scale at the readout), so the state h
carries no scale. State h: [B, D, N]. Layout of x / y: [B, T, D] (channel op).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def ema_recurrent_step(
    x_t: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, h: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """x_t [B, D], p/log_q/beta/gamma [D, N], h [B, D, N] -> (y_t [B, D], new h [B, D, N])."""
    h = (p * beta) * x_t.unsqueeze(-1).to(h.dtype) + torch.exp(log_q) * h
    y = (h * gamma).sum(-1) * gamma.shape[1] ** -0.5
    return y.to(x_t.dtype), h


def ema_naive(
    x: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token loop: x [B, T, D] -> (y [B, T, D], final h [B, D, N]). The definition (float64 oracle)."""
    B, T, D = x.shape
    h = x.new_zeros(B, D, p.shape[1]) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        y, h = ema_recurrent_step(x[:, t], p, log_q, beta, gamma, h)
        ys.append(y)
    return torch.stack(ys, 1) if ys else x.clone(), h
