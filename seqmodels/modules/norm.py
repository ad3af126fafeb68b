"""Normalization layers: RMSNorm (Zhang & Sennrich 2019) and LayerNorm, chosen by `cfg.norm`."""
from __future__ import annotations

import torch
from torch import nn

from seqmodels.kernels._dtype import compute_dtype


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (float64 stays float64).

    `elementwise_affine=False` gives TransNormerLLM's SRMSNorm (no weight).
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = compute_dtype(x.dtype)
        h = x.to(compute)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = h.to(x.dtype)
        return h * self.weight if self.weight is not None else h


def build_norm(cfg, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)
