"""Gated linear attention, one token at a time: the decoding step and a token-loop reference.

    S_t = diag(e^{gk_t}) S_{t-1} diag(e^{gv_t}) + k_t v_tᵀ ,    o_t = scale · S_tᵀ q_t

(docs/architecture.md §3.1; GLA, arXiv 2312.06635, Eq. 2 in recurrent form; value decay: ReLiT, arXiv 2310.15719.)
The state is kept in float32 (float64 for float64 inputs); outputs come back in q's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dtype import compute_dtype
from .._validate import check_log_decay, check_shape
from .gates import finite_log_decay


def _step(q, k, v, gk, gv, state, scale):
    """Unchecked step on compute-dtype tensors: q,k [B,H,Dk], v [B,H,Dv], gk None|[B,H]|[B,H,Dk], gv None|[B,H,Dv]."""
    if gk is not None:
        state = state * (gk.exp().unsqueeze(-1) if gk.dim() == 3 else gk.exp()[..., None, None])
    if gv is not None:
        state = state * gv.exp().unsqueeze(-2)
    state = state + k.unsqueeze(-1) * v.unsqueeze(-2)
    o = scale * torch.einsum("bhi,bhij->bhj", q, state)
    return o, state


def gla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay_k: Optional[torch.Tensor] = None,
    log_decay_v: Optional[torch.Tensor] = None,
    state: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
):
    """One decoding step. q,k [B,H,Dk], v [B,H,Dv], log_decay_k None|[B,H]|[B,H,Dk],
    log_decay_v None|[B,H,Dv], state None (zeros)|[B,H,Dk,Dv]. Returns (o_t [B,H,Dv], new_state)."""
    sizes: dict = {}
    check_shape("q", q, ("B", "H", "Dk"), sizes)
    check_shape("k", k, ("B", "H", "Dk"), sizes)
    check_shape("v", v, ("B", "H", "Dv"), sizes)
    if log_decay_k is not None:
        if log_decay_k.dim() == 2:
            check_shape("log_decay_k", log_decay_k, ("B", "H"), sizes)
        else:
            check_shape("log_decay_k", log_decay_k, ("B", "H", "Dk"), sizes)
    if log_decay_v is not None:
        check_shape("log_decay_v", log_decay_v, ("B", "H", "Dv"), sizes)
    if state is not None:
        check_shape("state", state, ("B", "H", "Dk", "Dv"), sizes)
    check_log_decay("log_decay_k", log_decay_k)
    check_log_decay("log_decay_v", log_decay_v)
    dtype = compute_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if state is None:
        state = q.new_zeros(q.shape[0], q.shape[1], q.shape[2], v.shape[2], dtype=dtype)
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    gk, gv = finite_log_decay(cast(log_decay_k)), finite_log_decay(cast(log_decay_v))
    o, state = _step(cast(q), cast(k), cast(v), gk, gv, state.to(dtype), scale)
    return o.to(q.dtype), state


def gla_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay_k: Optional[torch.Tensor] = None,
    log_decay_v: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    reverse: bool = False,
):
    """Token loop over `_step` (same arguments and layout as seqmodels.kernels.gla.gla; unchecked)."""
    B, T, H, Dk = q.shape
    dtype = compute_dtype(q.dtype)
    scale = Dk ** -0.5 if scale is None else scale
    state = q.new_zeros(B, H, Dk, v.shape[-1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    qc, kc, vc = map(cast, (q, k, v))
    gk, gv = finite_log_decay(cast(log_decay_k)), finite_log_decay(cast(log_decay_v))
    outputs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        outputs[t], state = _step(
            qc[:, t], kc[:, t], vc[:, t],
            None if gk is None else gk[:, t], None if gv is None else gv[:, t], state, scale,
        )
    o = torch.stack(outputs, dim=1).to(q.dtype)
    return o, (state if output_final_state else None)
