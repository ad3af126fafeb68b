"""Training form of Mega's EMA: materialize the length-T kernel and convolve by FFT (long_conv).

Unrolling h_t = p β x_t + q h_{t-1} (arXiv 2209.10655 §3.1, App. A):
    y_t = Σ_{l<=t} K_l x_{t-l} + N^{-1/2} Σ_n γ_n q_n^{t+1} h0_n,   K_l = N^{-1/2} Σ_n γ_n p_n β_n q_n^l
with q^l = exp(l·log_q) (every exponent <= 0, no overflow). The final state is
h_T = Σ_s p β q^{T-1-s} x_s + q^T h0. Work dtype float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._dtype import compute_dtype
from ..long_conv.chunk import long_conv_fft


def ema_fft(
    x: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x [B, T, D], p/log_q/beta/gamma [D, N], initial_state [B, D, N] -> (y [B, T, D], h [B, D, N] or None)."""
    T = x.shape[1]
    work = compute_dtype(x.dtype)
    scale = gamma.shape[1] ** -0.5
    p, log_q, beta, gamma = (t.to(work) for t in (p, log_q, beta, gamma))
    lags = torch.arange(T + 1, device=x.device, dtype=work)
    decay = torch.exp(log_q.unsqueeze(-1) * lags)  # [D, N, T+1]: q^l for l = 0..T
    kernel = torch.einsum("dnl,dn->dl", decay[..., :T], gamma * p * beta * scale)
    y, _ = long_conv_fft(x.to(work), kernel)
    if initial_state is not None:
        y = y + torch.einsum("dnt,bdn->btd", decay[..., 1:], initial_state.to(work) * gamma * scale)
    final = None
    if output_final_state:
        weights = decay[..., :T].flip(-1) * (p * beta).unsqueeze(-1)  # p β q^{T-1-s}
        final = torch.einsum("dnt,btd->bdn", weights, x.to(work))
        if initial_state is not None:
            final = final + decay[..., T] * initial_state.to(work)
    return y.to(x.dtype), final
