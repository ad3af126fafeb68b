"""ssm_conv one token at a time (the decoding form): h_t = λ ⊙ h_{t−1} + x_t, y_t = Re Σ_n C_n h_{t,n},
in real arithmetic on (Re, Im) pairs. O(D·N) per token, state [B, D, N, 2] constant in T."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .chunk import complex_mul


def ssm_conv_step_real(x_t, lam_re, lam_im, coeff, h) -> Tuple[torch.Tensor, torch.Tensor]:
    """x_t [B, D], λ (Re, Im) [D, N], coeff [D, N, 2], h [B, D, N, 2] -> (y_t [B, D], new h)."""
    h_re, h_im = complex_mul(lam_re, lam_im, h[..., 0], h[..., 1])
    h_re = h_re + x_t.unsqueeze(-1)
    y = (coeff[..., 0] * h_re - coeff[..., 1] * h_im).sum(-1)
    return y, torch.stack([h_re, h_im], dim=-1)


def ssm_conv_recurrent(x, log_rate, frequency, coeff, initial_state: Optional[torch.Tensor]):
    """Token loop over x [B, T, D]: (y [B, T, D], final h [B, D, N, 2])."""
    from . import pole

    B, T, D = x.shape
    lam_re, lam_im = pole(log_rate, frequency)
    h = initial_state if initial_state is not None else x.new_zeros(B, D, log_rate.shape[1], 2)
    ys = []
    for t in range(T):
        y, h = ssm_conv_step_real(x[:, t], lam_re, lam_im, coeff, h)
        ys.append(y)
    return torch.stack(ys, dim=1), h
