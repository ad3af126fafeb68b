"""long_conv: causal convolution with a length-L kernel, by FFT (training), direct (oracle), or per token.

y_t = sum_{l<L} kernel[:, l] x_{t-l} per channel. Used by CHELA's long convolution (arXiv
2406.08128 §3) and as the training form of Mega's EMA (arXiv 2209.10655 §3.1, App. A); the FFT
with zero padding is H3/S4's FFTConv (arXiv 2212.14052 §3.3). L may be smaller than, equal to or
larger than T. Layout [B, T, D] (channel op: heads folded into D).
Decoding state: the last L-1 inputs [B, L-1, D] (bounded by L, constant in generated length).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._conv_tail import last_inputs
from .._validate import check_same_device_dtype, check_shape
from .chunk import long_conv_fft
from .naive import long_conv_direct
from .recurrent import long_conv_recurrent_step

__all__ = ["long_conv", "long_conv_step", "long_conv_direct"]


def long_conv(
    x: torch.Tensor,
    kernel: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal convolution of x [B, T, D] with kernel [D, L].

    initial_state: [B, L-1, D], the L-1 inputs before x (oldest first), for continuation.
    Returns (y [B, T, D], final_state [B, L-1, D] = last L-1 inputs, or None).
    backend: "naive" (direct O(T*L)) | "torch" / "auto" (FFT).
    """
    sizes: dict = {}
    check_shape("x", x, ("B", "T", "D"), sizes)
    check_shape("kernel", kernel, ("D", "L"), sizes)
    L = kernel.shape[1]
    if L < 1:
        raise ValueError(f"kernel has shape {tuple(kernel.shape)}; expected at least one tap (L >= 1)")
    if initial_state is not None:
        check_shape("initial_state", initial_state, ("B", L - 1, "D"), sizes)
    check_same_device_dtype({"x": x, "kernel": kernel, "initial_state": initial_state})
    if backend == "naive":
        y = long_conv_direct(x, kernel, initial_state)
        return y, last_inputs(x, initial_state, L - 1) if output_final_state else None
    if backend not in ("torch", "auto"):
        raise ValueError(f"backend must be 'naive', 'torch' or 'auto', got {backend!r}")
    return long_conv_fft(x, kernel, initial_state, output_final_state)


def long_conv_step(x_t: torch.Tensor, kernel: torch.Tensor, tail: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: x_t [B, D], kernel [D, L], tail [B, L-1, D] (None = zeros) -> (y_t [B, D], new tail)."""
    sizes: dict = {}
    check_shape("x_t", x_t, ("B", "D"), sizes)
    check_shape("kernel", kernel, ("D", "L"), sizes)
    if kernel.shape[1] < 1:
        raise ValueError(f"kernel has shape {tuple(kernel.shape)}; expected at least one tap (L >= 1)")
    if tail is None:
        tail = x_t.new_zeros(x_t.shape[0], kernel.shape[1] - 1, x_t.shape[1])
    check_shape("tail", tail, ("B", kernel.shape[1] - 1, "D"), sizes)
    check_same_device_dtype({"x_t": x_t, "kernel": kernel, "tail": tail})
    return long_conv_recurrent_step(x_t, kernel, tail)
