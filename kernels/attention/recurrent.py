"""Decoding states of softmax attention and the one-token step.

Three caches, one per attention mode (all batch entries advance in lockstep):
- KVCache (causal, full): k [B, S, Hkv, D], v [B, S, Hkv, Dv] for positions 0..S-1; grows by one
  per token (torch.cat, O(S) per step).
- WindowCache (sliding window w): ring buffers k [B, w, Hkv, D], v [B, w, Hkv, Dv]; the key at
  absolute position p lives in slot p % w; `seen` = tokens appended so far. Constant size.
- ChunkCache (chunk-local, Mega-chunk c, arXiv 2209.10655 §3.5): buffers k [B, c, Hkv, D],
  v [B, c, Hkv, Dv]; position p lives in slot p % c and only slots of the current chunk are
  valid, so the buffer is logically cleared at every chunk boundary. Constant size.
Buffers are written in place (decoding runs without autograd). `positions()` gives each slot's
absolute position (-1 = empty), e.g. to build a relative-position bias for the step.
`ordered()` returns the valid keys/values in position order with the first position, for
prefill continuation through `attention(..., k_offset=first, q_offset=seen)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .extras import Extras
from .sdpa import attention_sdpa


@dataclass
class KVCache:
    k: torch.Tensor  # [B, S, Hkv, D]
    v: torch.Tensor  # [B, S, Hkv, Dv]

    @classmethod
    def from_prefill(cls, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """Cache after the keys/values k [B, T, Hkv, D], v [B, T, Hkv, Dv] of positions 0..T-1 (T may be 0)."""
        return cls(k.clone(), v.clone())

    @property
    def seen(self) -> int:
        return self.k.shape[1]

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        self.k = torch.cat([self.k, k_t.unsqueeze(1)], dim=1)
        self.v = torch.cat([self.v, v_t.unsqueeze(1)], dim=1)

    def positions(self) -> torch.Tensor:
        return torch.arange(self.seen, device=self.k.device)

    def ordered(self) -> Tuple[torch.Tensor, torch.Tensor, int]:
        return self.k, self.v, 0


@dataclass
class _SlotCache:
    k: torch.Tensor  # [B, L, Hkv, D]  (L = window or chunk size)
    v: torch.Tensor  # [B, L, Hkv, Dv]
    seen: int  # tokens appended so far; position p lives in slot p % L

    @classmethod
    def from_prefill(cls, k: torch.Tensor, v: torch.Tensor, size: int, k_offset: int = 0):
        """Cache after keys/values of absolute positions k_offset..k_offset+T-1 (k [B, T, Hkv, D])."""
        B, T, Hkv, D = k.shape
        cache = cls(k.new_zeros(B, size, Hkv, D), v.new_zeros(B, size, Hkv, v.shape[3]), k_offset)
        keep = cache._span_after(k_offset + T)
        if keep > T:
            raise ValueError(
                f"k has shape {tuple(k.shape)} starting at position {k_offset}; the cache after position "
                f"{k_offset + T - 1} needs the last {keep} keys (start k at position {k_offset + T - keep} or earlier)"
            )
        for j in range(T - keep, T):
            slot = (k_offset + j) % size
            cache.k[:, slot] = k[:, j]
            cache.v[:, slot] = v[:, j]
        cache.seen = k_offset + T
        return cache

    @property
    def size(self) -> int:
        return self.k.shape[1]

    def _span_after(self, seen: int) -> int:  # number of valid slots once `seen` tokens are in
        raise NotImplementedError

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        slot = self.seen % self.size
        self.k[:, slot] = k_t
        self.v[:, slot] = v_t
        self.seen += 1

    def positions(self) -> torch.Tensor:
        """[L] long: absolute position held by each slot, -1 where the slot is not valid."""
        n = self._span_after(self.seen)
        pos = torch.arange(self.seen - n, self.seen, device=self.k.device)
        out = torch.full((self.size,), -1, dtype=torch.long, device=self.k.device)
        out[pos % self.size] = pos
        return out

    def ordered(self) -> Tuple[torch.Tensor, torch.Tensor, int]:
        n = self._span_after(self.seen)
        slots = torch.arange(self.seen - n, self.seen, device=self.k.device) % self.size
        return self.k[:, slots], self.v[:, slots], self.seen - n


class WindowCache(_SlotCache):
    """Ring buffer of the last `window` keys/values (sliding-window attention)."""

    def _span_after(self, seen: int) -> int:
        return min(seen, self.size)


class ChunkCache(_SlotCache):
    """Keys/values of the current chunk only (chunk-local attention); empty after each boundary."""

    def _span_after(self, seen: int) -> int:
        return (seen - 1) % self.size + 1 if seen > 0 else 0


def attention_recurrent_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    cache,
    scale: float,
    extras: Extras = Extras(),
) -> torch.Tensor:
    """Append (k_t, v_t) [B, Hkv, D] to `cache` and attend q_t [B, H, D] over its valid entries -> [B, H, Dv].

    extras.bias: broadcastable to [B, H, 1, L] over the cache slots (L = cache.k.shape[1] after appending).
    """
    cache.append(k_t, v_t)
    valid = cache.positions() >= 0  # [L]
    return attention_sdpa(
        q_t.unsqueeze(1), cache.k, cache.v, valid.unsqueeze(0), scale, extras
    ).squeeze(1)
