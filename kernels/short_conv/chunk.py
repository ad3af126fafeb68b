"""Training form of the depthwise causal short convolution: one grouped F.conv1d with left padding.

Same semantics as naive.py: y_t = bias + sum_{i<K} weight[:, i] x_{t-i}. The left padding is the
K-1 previous inputs (`initial_state`, for prefill continuation) or zeros. F.conv1d computes a
cross-correlation, so the taps are flipped: its weight[:, 0, j] = our weight[:, K-1-j].
Layout [B, T, D] (channel op).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._conv_tail import last_inputs, with_past


def short_conv_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x [B, T, D], weight [D, K] -> (y [B, T, D], final tail [B, K-1, D] or None)."""
    B, T, D = x.shape
    K = weight.shape[1]
    full = with_past(x, initial_state, K - 1)  # [B, K-1+T, D]
    y = F.conv1d(full.transpose(1, 2), weight.flip(-1).unsqueeze(1), bias, groups=D).transpose(1, 2)
    final = last_inputs(x, initial_state, K - 1) if output_final_state else None
    return y, final
