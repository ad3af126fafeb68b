"""Training form of ssm_conv: materialize K_l = Re Σ_n C_n λ_n^l for the T lags, convolve by FFT
(long_conv), and add the initial state's decaying contribution Re Σ_n C_n λ_n^{t+1} h0_n.
The final state h_T = Σ_s λ^{T−1−s} x_s + λ^T h0 is one contraction over time (O(T·D·N))."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..long_conv.chunk import long_conv_fft


def powers(log_rate: torch.Tensor, frequency: torch.Tensor, length: int, start: int = 0):
    """(Re, Im) of λ^l for l = start .. start+length−1: [D, N, length] each. The phase l·ω is formed
    in float64 and reduced mod 2π before the cosine (float32 phases drift at long lags)."""
    lags = torch.arange(start, start + length, device=log_rate.device, dtype=torch.float64)
    magnitude = torch.exp(-torch.exp(log_rate).unsqueeze(-1) * lags.to(log_rate.dtype))
    phase = torch.remainder(frequency.to(torch.float64).unsqueeze(-1) * lags, 2 * torch.pi).to(log_rate.dtype)
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


def complex_mul(a_re, a_im, b_re, b_im):
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


def ssm_conv_fft(
    x: torch.Tensor, log_rate: torch.Tensor, frequency: torch.Tensor, coeff: torch.Tensor,
    initial_state: Optional[torch.Tensor], output_final_state: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x [B, T, D] (work dtype), parameters [D, N] / [D, N, 2], h0 [B, D, N, 2] -> (y, h_T or None)."""
    T = x.shape[1]
    re, im = powers(log_rate, frequency, T + 1)  # λ^l, l = 0..T
    c_re, c_im = coeff[..., 0], coeff[..., 1]
    kernel = torch.einsum("dnl,dn->dl", re[..., :T], c_re) - torch.einsum("dnl,dn->dl", im[..., :T], c_im)
    y, _ = long_conv_fft(x, kernel)
    if initial_state is not None:
        h_re, h_im = initial_state[..., 0], initial_state[..., 1]
        ch_re, ch_im = complex_mul(c_re, c_im, h_re, h_im)  # C h0 [B, D, N]
        y = y + torch.einsum("dnt,bdn->btd", re[..., 1:], ch_re) - torch.einsum("dnt,bdn->btd", im[..., 1:], ch_im)
    final = None
    if output_final_state:
        lag_re, lag_im = re[..., :T].flip(-1), im[..., :T].flip(-1)  # λ^{T−1−s}
        final_re = torch.einsum("dnt,btd->bdn", lag_re, x)
        final_im = torch.einsum("dnt,btd->bdn", lag_im, x)
        if initial_state is not None:
            carry_re, carry_im = complex_mul(re[..., T], im[..., T], initial_state[..., 0], initial_state[..., 1])
            final_re, final_im = final_re + carry_re, final_im + carry_im
        final = torch.stack([final_re, final_im], dim=-1)
    return y, final
