"""Normalized gated linear attention: o_t = (S_tᵀ q_t) / (z_t · q_t + eps) through one `gla` call.

Shared by the families whose paper divides by a running key sum (Based, arXiv 2402.18668 §3.1;
ReLiT, arXiv 2310.15719; docs/architecture.md §3.2): a ones column is appended to v, so the gla state
S = [C | z] carries the normalizer z_t = diag(e^{gk_t}) z_{t-1} + k_t as its last column
(value-side decay 0 for that column) and the last output column is z_t · q_t. scale = 1.

State: [B, H, Dk, Dv + 1] in float32 (float64 for float64 inputs), as the gla op returns it.
"""
from __future__ import annotations

from typing import Optional

import torch

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.gla import gla, gla_step


def _with_ones(v: torch.Tensor, log_decay_v: Optional[torch.Tensor]):
    v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
    if log_decay_v is not None:
        log_decay_v = torch.cat([log_decay_v, log_decay_v.new_zeros(*log_decay_v.shape[:-1], 1)], dim=-1)
    return v1, log_decay_v


def _divide(o: torch.Tensor, eps: float) -> torch.Tensor:
    return o[..., :-1] / (o[..., -1:] + eps)


def normalized_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float,
    log_decay_k: Optional[torch.Tensor] = None,
    log_decay_v: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: str = "auto",
):
    """q, k [B,T,H,Dk], v [B,T,H,Dv] (decays as in `gla`) -> (o [B,T,H,Dv], state [B,H,Dk,Dv+1] | None)."""
    v1, log_decay_v = _with_ones(v, log_decay_v)
    o, state = gla(q, k, v1, log_decay_k, log_decay_v, scale=1.0, initial_state=initial_state,
                   output_final_state=output_final_state, chunk_size=chunk_size, backend=backend)
    return _divide(o, eps), state


def normalized_gla_step(q, k, v, state, eps: float, log_decay_k=None, log_decay_v=None):
    """One token: q, k [B,H,Dk], v [B,H,Dv], state [B,H,Dk,Dv+1] -> (o_t [B,H,Dv], new state)."""
    v1, log_decay_v = _with_ones(v, log_decay_v)
    o, state = gla_step(q, k, v1, log_decay_k, log_decay_v, state, scale=1.0)
    return _divide(o, eps), state


def zero_state(batch_size: int, heads: int, dk: int, dv: int, device, dtype) -> torch.Tensor:
    """The empty normalized state [B, H, Dk, Dv + 1]."""
    return torch.zeros(batch_size, heads, dk, dv + 1, device=device, dtype=compute_dtype(dtype or torch.float32))
