"""Chunked form of Mega's EMA with the hidden state h carried between chunks (prefill continuation).

Inside a chunk of length C (positions r, s = 0..C-1), with K_l the EMA kernel (fft.py):
    y_r = Σ_{s<=r} K_{r-s} x_s  (a C x C Toeplitz matmul)  +  N^{-1/2} Σ_n γ_n q_n^{r+1} h_n
    h  <- q^C h + Σ_s p β q^{C-1-s} x_s
All exponents are l·log_q <= 0. Cost O(T·C·D + T·D·N); no T x T tensor. arXiv 2209.10655 §3.1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._dtype import compute_dtype


def ema_chunk(
    x: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None, chunk_size: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, D] -> (y [B, T, D], final h [B, D, N]); state and math in float32 (float64 for float64)."""
    B, T, D = x.shape
    N = p.shape[1]
    work = compute_dtype(x.dtype)
    scale = N ** -0.5
    p, log_q, beta, gamma = (t.to(work) for t in (p, log_q, beta, gamma))
    C = min(chunk_size, max(T, 1))
    decay = torch.exp(log_q.unsqueeze(-1) * torch.arange(C + 1, device=x.device, dtype=work))  # [D, N, C+1]
    kernel = torch.einsum("dnl,dn->dl", decay[..., :C], gamma * p * beta * scale)  # [D, C]
    lag = torch.arange(C, device=x.device)
    lag = lag.unsqueeze(1) - lag.unsqueeze(0)  # r - s
    toeplitz = torch.where(lag >= 0, kernel[:, lag.clamp(min=0)], kernel.new_zeros(()))  # [D, C, C]
    read = decay[..., 1:] * (gamma * scale).unsqueeze(-1)  # [D, N, C]: γ scale q^{r+1}
    h = x.new_zeros(B, D, N, dtype=work) if initial_state is None else initial_state.to(work)
    ys = []
    for start in range(0, T, C):
        xc = x[:, start : start + C].to(work)
        n = xc.shape[1]
        y = torch.einsum("drs,bsd->brd", toeplitz[:, :n, :n], xc) + torch.einsum("dnr,bdn->brd", read[..., :n], h)
        write = decay[..., :n].flip(-1) * (p * beta).unsqueeze(-1)  # p β q^{n-1-s}
        h = decay[..., n] * h + torch.einsum("dns,bsd->bdn", write, xc)
        ys.append(y)
    y = torch.cat(ys, 1) if ys else x.to(work)
    return y.to(x.dtype), h
