"""ssm_conv by its definition (test oracle): y_t = Σ_{s<=t} Re Σ_n C_n λ_n^{t−s} x_s + Re Σ_n C_n λ_n^{t+1} h0_n,
with every power λ^l formed directly (no FFT, no recurrence). O(T²·D·N)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .chunk import complex_mul, powers


def ssm_conv_naive(
    x: torch.Tensor, log_rate: torch.Tensor, frequency: torch.Tensor, coeff: torch.Tensor,
    initial_state: Optional[torch.Tensor], output_final_state: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    B, T, D = x.shape
    N = log_rate.shape[1]
    re, im = powers(log_rate, frequency, T + 1)  # [D, N, T+1]
    c_re, c_im = coeff[..., 0], coeff[..., 1]
    h0 = initial_state if initial_state is not None else x.new_zeros(B, D, N, 2)
    ys = []
    for t in range(T):
        lag = t - torch.arange(t + 1, device=x.device)  # t − s for s = 0..t
        h_re = torch.einsum("dns,bsd->bdn", re[..., lag], x[:, : t + 1])
        h_im = torch.einsum("dns,bsd->bdn", im[..., lag], x[:, : t + 1])
        carry_re, carry_im = complex_mul(re[..., t + 1], im[..., t + 1], h0[..., 0], h0[..., 1])
        h_re, h_im = h_re + carry_re, h_im + carry_im  # h_t
        ys.append((c_re * h_re - c_im * h_im).sum(-1))
    final = torch.stack([h_re, h_im], dim=-1) if output_final_state else None
    return torch.stack(ys, dim=1), final
