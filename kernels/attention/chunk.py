"""Chunked training form of local attention (sliding window / chunk-local) in O(T·L) instead of O(T²).

Self-attention only (S = T, q_offset = k_offset, causal). The sequence is cut into blocks of L
tokens: L = chunk_size for chunk-local attention (blocks aligned to absolute positions multiple of
the chunk size, the first block left-padded), L = window for a sliding window (each query block
also sees the previous block, which holds every key of its window). Each block is one SDPA batch
entry with its own mask from naive.visible_mask on absolute positions; padded keys are visible
only to padded queries (so no row is empty) and padded outputs are dropped. Prefix tokens are
repeated per block; sink logits are per head. Same numbers as the full-mask form (tests).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .extras import Extras
from .naive import visible
from .sdpa import attention_sdpa


def previous_block(x: torch.Tensor) -> torch.Tensor:
    """[B, n, ...] blocks along dim 1 -> at block b, block b−1 (zeros at the first)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def attention_local(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int, window: Optional[int], chunk_size: Optional[int],
    scale: float, extras: Extras = Extras(),
) -> torch.Tensor:
    """q [B,T,H,D], k [B,T,Hkv,D], v [B,T,Hkv,Dv], all at positions offset..offset+T-1 -> o [B,T,H,Dv]. No bias."""
    B, T, H, _ = q.shape
    block = chunk_size if chunk_size is not None else window
    prev = 0 if chunk_size is not None else 1  # earlier blocks each query block needs
    lead = offset % block if chunk_size is not None else 0
    n = (lead + T + block - 1) // block
    pad = (lead, n * block - lead - T)

    def blocks(x):  # [B, T, heads, d] -> [B, n, block, heads, d] with zero padding
        return F.pad(x, (0, 0, 0, 0) + pad).reshape(B, n, block, *x.shape[2:])

    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    real = torch.zeros(n * block, dtype=torch.bool, device=q.device)
    real[lead : lead + T] = True
    real = real.view(n, block)
    pos = (offset - lead + torch.arange(n * block, device=q.device)).view(n, block)
    if prev:  # keys of block i = [block i-1, block i]
        kb, vb = torch.cat([previous_block(kb), kb], dim=2), torch.cat([previous_block(vb), vb], dim=2)
        key_real = torch.cat([torch.cat([real.new_zeros(1, block), real[:-1]]), real], dim=1)
        key_pos = torch.cat([pos - block, pos], dim=1)
    else:
        key_real, key_pos = real, pos
    # allowed[i, r, s]: the rule on absolute positions, real keys only, except for padded queries
    # (which always see at least their own padded key, so no softmax row is empty)
    allowed = visible(pos.unsqueeze(2), key_pos.unsqueeze(1), True, window, chunk_size)
    allowed &= key_real.unsqueeze(1) | ~real.unsqueeze(2)
    prefix_k, prefix_v = extras.prefix_k, extras.prefix_v
    if prefix_k is not None:
        prefix_k, prefix_v = prefix_k.repeat_interleave(n, dim=0), prefix_v.repeat_interleave(n, dim=0)
    flat = lambda x: x.reshape(B * n, *x.shape[2:])  # noqa: E731
    mask = allowed.unsqueeze(0).expand(B, -1, -1, -1).reshape(B * n, 1, block, -1)
    out = attention_sdpa(
        flat(qb), flat(kb), flat(vb), mask, scale, Extras(None, prefix_k, prefix_v, extras.sink_logits)
    )
    return out.reshape(B, n * block, H, -1)[:, lead : lead + T]
