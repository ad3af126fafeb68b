"""Training / prefill form of the causal long convolution (any chunk of a sequence, continued from the
previous chunk's tail): FFT with zero padding so nothing wraps.

With the cached tail prepended (N = L-1+T inputs), the FFT length n >= N + L - 1 (next power of
two) makes the circular convolution equal the linear one on the outputs we keep (for T = L and no
tail that is the classic 2L padding of S4/H3, arXiv 2212.14052 §3.3). Computed in float32 (float64
for float64 inputs); output in x's dtype. Returns the last L-1 inputs as the new tail, so a long
sequence can be processed chunk by chunk (prefill continuation) with bounded state.
Layout [B, T, D] (channel op).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._conv_tail import last_inputs
from .._dtype import compute_dtype


def long_conv_fft(
    x: torch.Tensor, kernel: torch.Tensor, initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x [B, T, D], kernel [D, L], initial_state [B, L-1, D] -> (y [B, T, D], tail [B, L-1, D] or None)."""
    T, L = x.shape[1], kernel.shape[1]
    work = compute_dtype(x.dtype)
    full = x if initial_state is None else torch.cat([initial_state, x], dim=1)
    N = full.shape[1]
    n = 1 << max(0, (N + L - 2)).bit_length()  # power of two >= N + L - 1
    spec_x = torch.fft.rfft(full.to(work).transpose(1, 2), n=n)  # [B, D, n//2+1]
    spec_k = torch.fft.rfft(kernel.to(work), n=n)  # [D, n//2+1]
    y = torch.fft.irfft(spec_x * spec_k, n=n)[..., N - T : N].transpose(1, 2).to(x.dtype)
    return y, last_inputs(x, initial_state, L - 1) if output_final_state else None
