"""The precision rule of every op and layer: float64 stays float64, everything else computes in float32."""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in (and keep recurrent states in) for inputs of `dtype`: float64 for
    float64, float32 for every other dtype (bf16, fp16, float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
