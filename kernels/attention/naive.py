"""Softmax attention written out in float64-friendly matmuls with an explicitly built mask (the definition).

For query i at absolute position pq_i = q_offset + i and key j at pk_j = k_offset + j:
    visible(i, j) = [pk_j <= pq_i]            (causal)
                  & [pq_i - pk_j < window]     (sliding window: the last `window` keys incl. itself)
                  & [pk_j // c == pq_i // c]   (chunk-local, Mega-chunk: arXiv 2209.10655 §3.5)
    o_i = sum_j softmax_j(scale q_i.k_j + bias_ij) v_j, where the softmax also runs over
    always-visible prefix keys (persistent memory, Titans arXiv 2501.00663 Eq. 19) and over
    m value-less sink logits per head (Lizard's meta-memory, arXiv 2507.09025 §3) in its denominator.
GQA: query head h reads key/value head h // (H / Hkv). Layout [B, T, H, D]. Oracle for tests only.
"""
from __future__ import annotations

from typing import Optional

import torch

from .extras import Extras


def visible_mask(
    T: int, S: int, q_offset: int, k_offset: int, causal: bool, window: Optional[int], chunk_size: Optional[int], device=None
) -> torch.Tensor:
    """Boolean [T, S]: True where query i may attend to key j (positions as in the module docstring)."""
    pq = q_offset + torch.arange(T, device=device)
    pk = k_offset + torch.arange(S, device=device)
    return visible(pq.unsqueeze(1), pk.unsqueeze(0), causal, window, chunk_size)


def visible(pq: torch.Tensor, pk: torch.Tensor, causal: bool, window: Optional[int], chunk_size: Optional[int]) -> torch.Tensor:
    """The visibility rule on broadcastable tensors of query / key absolute positions."""
    allowed = torch.ones(torch.broadcast_shapes(pq.shape, pk.shape), dtype=torch.bool, device=pq.device)
    if causal:
        allowed &= pk <= pq
    if window is not None:
        allowed &= (pq - pk) < window
        if not causal:
            allowed &= (pk - pq) < window
    if chunk_size is not None:
        allowed &= torch.div(pk, chunk_size, rounding_mode="floor") == torch.div(pq, chunk_size, rounding_mode="floor")
    return allowed


def attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float, extras: Extras = Extras()) -> torch.Tensor:
    """q [B,T,H,D], k [B,S,Hkv,D], v [B,S,Hkv,Dv], allowed [T,S] or [B,T,S] bool, extras (extras.py) -> o [B,T,H,Dv].
    One head at a time."""
    bias, prefix_k, prefix_v, sink_logits = extras.bias, extras.prefix_k, extras.prefix_v, extras.sink_logits
    B, T, H, _ = q.shape
    group = H // k.shape[2]
    out = []
    for h in range(H):
        g = h // group
        scores = scale * q[:, :, h] @ k[:, :, g].transpose(1, 2)  # [B, T, S]
        if bias is not None:
            scores = scores + bias.expand(B, H, T, k.shape[1])[:, h]
        scores = scores.masked_fill(~allowed, float("-inf"))
        values = v[:, :, g]  # [B, S, Dv]
        if prefix_k is not None:
            scores = torch.cat([scale * q[:, :, h] @ prefix_k[:, :, g].transpose(1, 2), scores], dim=2)
            values = torch.cat([prefix_v[:, :, g], values], dim=1)
        if sink_logits is not None:  # value-less columns: they only enlarge the denominator
            scores = torch.cat([scores, sink_logits[h].expand(B, T, -1)], dim=2)
            values = torch.cat([values, values.new_zeros(B, sink_logits.shape[1], values.shape[2])], dim=1)
        weights = torch.exp(scores - scores.max(dim=2, keepdim=True).values)
        weights = weights / weights.sum(dim=2, keepdim=True)
        out.append(weights @ values)
    return torch.stack(out, dim=2)
