"""One-token step of the depthwise causal short convolution (decoding).

State: `tail` [B, K-1, D], the previous K-1 inputs, oldest first (tail[:, -1] = x_{t-1}).
y_t = bias + weight[:, 0] x_t + sum_{1<=i<K} weight[:, i] tail[:, K-1-i]; the new tail drops the
oldest input and appends x_t. Constant state size. Layout [B, D] per token.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def short_conv_recurrent_step(
    x_t: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], tail: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """x_t [B, D], weight [D, K], tail [B, K-1, D] -> (y_t [B, D], new tail [B, K-1, D])."""
    window = torch.cat([tail.to(x_t.dtype), x_t.unsqueeze(1)], dim=1)  # [B, K, D], oldest first
    y = (window * weight.flip(-1).transpose(0, 1)).sum(dim=1)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]
