"""Decoding state shared by the causal convolutions (short_conv, long_conv): the last n inputs.

A causal convolution with an n+1-tap kernel continues a sequence exactly given the n inputs
before it (oldest first). Sequences shorter than n are left-padded with the previous tail or zeros.
"""
from __future__ import annotations

from typing import Optional

import torch


def with_past(x: torch.Tensor, past: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """[past or zeros (n inputs), x] along time: x [B, T, D] -> [B, n + T, D]."""
    if past is None:
        past = x.new_zeros(x.shape[0], n, x.shape[2])
    return torch.cat([past, x], dim=1)


def last_inputs(x: torch.Tensor, past: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """The last n inputs of [past, x] as a new tensor [B, n, D] (the tail after x)."""
    full = with_past(x, past, n)
    return full[:, full.shape[1] - n :].clone()
