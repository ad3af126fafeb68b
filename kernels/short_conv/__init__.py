"""short_conv: depthwise causal conv1d with a short kernel (K <= 8) and its K-1 tail as decoding state.

y_t = bias + sum_{i<K} weight[:, i] x_{t-i} per channel (weight[:, 0] multiplies the current
token; this is nn.Conv1d's weight[:, 0, ::-1]). Used by Based/BaseConv (arXiv 2402.18668 §3,
2312.04927), CHELA (arXiv 2406.08128 §3) and as the q/k/v conv of Titans (arXiv 2501.00663 §4.4).
Layout [B, T, D] (channel op: heads are folded into D by the layer).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._conv_tail import last_inputs
from .._validate import check_same_device_dtype, check_shape
from .chunk import short_conv_conv1d
from .naive import short_conv_naive
from .recurrent import short_conv_recurrent_step

MAX_KERNEL_SIZE = 8
__all__ = ["short_conv", "short_conv_step", "short_conv_naive", "MAX_KERNEL_SIZE"]


def _check_weight(weight: torch.Tensor, bias: Optional[torch.Tensor], sizes: dict) -> int:
    check_shape("weight", weight, ("D", "K"), sizes)
    K = weight.shape[1]
    if K > MAX_KERNEL_SIZE:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; short_conv expects kernel size K <= {MAX_KERNEL_SIZE} (use long_conv)")
    if bias is not None:
        check_shape("bias", bias, ("D",), sizes)
    return K


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal depthwise convolution of x [B, T, D] with weight [D, K] (K <= 8), bias [D] optional.

    initial_state: [B, K-1, D], the K-1 inputs before x (oldest first), for prefill continuation.
    Returns (y [B, T, D], final_state [B, K-1, D] = the last K-1 inputs, or None unless
    output_final_state). backend: "naive" (tap loop) | "torch" / "auto" (F.conv1d).
    """
    sizes: dict = {}
    check_shape("x", x, ("B", "T", "D"), sizes)
    K = _check_weight(weight, bias, sizes)
    if initial_state is not None:
        check_shape("initial_state", initial_state, ("B", K - 1, "D"), sizes)
    check_same_device_dtype({"x": x, "weight": weight, "bias": bias, "initial_state": initial_state})
    if backend == "naive":
        y = short_conv_naive(x, weight, bias, initial_state)
        return y, last_inputs(x, initial_state, K - 1) if output_final_state else None
    if backend not in ("torch", "auto"):
        raise ValueError(f"backend must be 'naive', 'torch' or 'auto', got {backend!r}")
    return short_conv_conv1d(x, weight, bias, initial_state, output_final_state)


def short_conv_step(
    x_t: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, tail: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: x_t [B, D], tail [B, K-1, D] (None = zeros) -> (y_t [B, D], new tail)."""
    sizes: dict = {}
    check_shape("x_t", x_t, ("B", "D"), sizes)
    K = _check_weight(weight, bias, sizes)
    if tail is None:
        tail = x_t.new_zeros(x_t.shape[0], K - 1, x_t.shape[1])
    check_shape("tail", tail, ("B", K - 1, "D"), sizes)
    check_same_device_dtype({"x_t": x_t, "weight": weight, "bias": bias, "tail": tail})
    return short_conv_recurrent_step(x_t, weight, bias, tail)
