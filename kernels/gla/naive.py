"""Gated linear attention, the definition in closed form (float64 oracle; tests only).

Op (docs/architecture.md §3.1; GLA: Yang et al. 2023, arXiv 2312.06635, Eqs. 2-3; value-side decay:
ReLiT, Pramanik et al., arXiv 2310.15719, §3):

    S_t = diag(e^{gk_t}) S_{t-1} diag(e^{gv_t}) + k_t v_tᵀ ,    o_t = scale · S_tᵀ q_t

Unrolled with b_t = Σ_{u≤t} g_u (per channel), every pair s ≤ t contributes

    o_t[j] = scale · Σ_{s≤t} Σ_i q_t[i] k_s[i] e^{bk_t[i]-bk_s[i]} · v_s[j] e^{bv_t[j]-bv_s[j]}
             + scale · Σ_i q_t[i] e^{bk_t[i]} S_0[i,j] e^{bv_t[j]}

which is computed here literally as a masked T×T(×D) tensor: memory O(T²·D), for small T only.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dtype import compute_dtype


def _pair_decay(log_decay: torch.Tensor) -> torch.Tensor:
    """[B,H,T,D] log-decays -> [B,H,T,T,D] with entry (t, s) = e^{b_t - b_s} for s ≤ t, else 0."""
    cum = log_decay.cumsum(dim=2)
    diff = cum.unsqueeze(3) - cum.unsqueeze(2)  # [B,H,T(t),T(s),D]
    T = log_decay.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=log_decay.device).tril()
    # mask before exp: e^{b_t - b_s} for s > t would overflow for strong gates
    return diff.masked_fill(~causal[:, :, None], float("-inf")).exp()


def gla_naive(
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
    """Masked T×T form of `gla` (same arguments and layout, see seqmodels.kernels.gla.gla).

    Computes in float64 when given float64, else float32; returns (o in q's dtype, final_state or None).
    reverse=True is the same scan run from the last token (time flipped in and out).
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    scale = Dk ** -0.5 if scale is None else scale

    def prep(x):  # [B,T,H,...] -> [B,H,T,...] in the compute dtype, time flipped for reverse
        x = x.to(dtype)
        x = x.flip(1) if reverse else x
        return x.transpose(1, 2)

    q, k, v = prep(q), prep(k), prep(v)
    gk = torch.zeros(B, H, T, Dk, dtype=dtype, device=q.device) if log_decay_k is None else prep(log_decay_k)
    if gk.dim() == 3:  # one decay per head, shared by all key channels
        gk = gk.unsqueeze(-1).expand(B, H, T, Dk)
    gv = torch.zeros(B, H, T, Dv, dtype=dtype, device=q.device) if log_decay_v is None else prep(log_decay_v)

    decay_k = _pair_decay(gk)  # [B,H,T,T,Dk]
    decay_v = _pair_decay(gv)  # [B,H,T,T,Dv]
    scores = torch.einsum("bhti,bhsi,bhtsi->bhts", q, k, decay_k)
    o = scale * torch.einsum("bhts,bhsj,bhtsj->bhtj", scores, v, decay_v)

    cum_k, cum_v = gk.cumsum(2), gv.cumsum(2)
    final_state = None
    if initial_state is not None:
        s0 = initial_state.to(dtype)
        o = o + scale * torch.einsum("bhti,bhij,bhtj->bhtj", q * cum_k.exp(), s0, cum_v.exp())
    if output_final_state:
        # S_T = e^{bk_T} S_0 e^{bv_T} + Σ_s (k_s e^{bk_T - bk_s}) (v_s e^{bv_T - bv_s})ᵀ
        k_to_end = k * (cum_k[:, :, -1:] - cum_k).exp()
        v_to_end = v * (cum_v[:, :, -1:] - cum_v).exp()
        final_state = torch.einsum("bhsi,bhsj->bhij", k_to_end, v_to_end)
        if initial_state is not None:
            final_state = final_state + cum_k[:, :, -1, :, None].exp() * s0 * cum_v[:, :, -1, None, :].exp()

    o = o.transpose(1, 2)
    o = o.flip(1) if reverse else o
    return o.to(out_dtype), final_state
