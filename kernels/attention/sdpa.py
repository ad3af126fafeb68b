"""Training form of softmax attention: one torch SDPA call with an explicit mask.

The boolean visibility mask (naive.visible_mask) becomes SDPA's attn_mask. Prefix keys/values
(always visible) are prepended; sink logits (value-less, Lizard arXiv 2507.09025 §3) are appended
as keys of zeros whose additive mask entry is the logit, so their score is exactly the logit and
their value is zero. With a bias or sinks the mask is additive (float), else boolean.
GQA uses SDPA's enable_gqa (head h reads kv head h // (H/Hkv)). Layout [B, T, H, D] in and out.
Memory: the mask is T x S, so this form is quadratic in T (sliding-window at long T included).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .extras import Extras


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float, extras: Extras = Extras()) -> torch.Tensor:
    """Same arguments as naive.attention_naive; allowed may be [T,S] or broadcastable to [B,H,T,S]."""
    bias, prefix_k, prefix_v, sink_logits = extras.bias, extras.prefix_k, extras.prefix_v, extras.sink_logits
    B, T, H, _ = q.shape
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, len, dim]
    mask = allowed
    additive = bias is not None or sink_logits is not None
    if additive:
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        mask = torch.where(allowed, zero if bias is None else bias.to(q.dtype), float("-inf"))
    if prefix_k is not None:
        P = prefix_k.shape[1]
        kh = torch.cat([prefix_k.transpose(1, 2), kh], dim=2)
        vh = torch.cat([prefix_v.transpose(1, 2), vh], dim=2)
        lead = torch.broadcast_shapes(mask.shape[:-1], (1, 1, T)) if mask.dim() > 2 else (T,)
        fill = torch.zeros(*lead, P, dtype=mask.dtype, device=mask.device) if additive else torch.ones(
            *lead, P, dtype=torch.bool, device=mask.device
        )
        mask = torch.cat([fill, mask.expand(*lead, mask.shape[-1])], dim=-1)
    if sink_logits is not None:
        m = sink_logits.shape[1]
        kh = torch.cat([kh, kh.new_zeros(B, kh.shape[1], m, kh.shape[3])], dim=2)
        vh = torch.cat([vh, vh.new_zeros(B, vh.shape[1], m, vh.shape[3])], dim=2)
        lead = torch.broadcast_shapes(mask.shape[:-1], (1, H, T))
        sinks = sink_logits.to(q.dtype)[:, None, :].expand(*lead, m)  # [.., H, T, m]
        mask = torch.cat([mask.expand(*lead, mask.shape[-1]), sinks], dim=-1)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=kh.shape[1] != H)
    return out.transpose(1, 2)
