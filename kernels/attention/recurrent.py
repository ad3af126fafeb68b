"""Decoding states of softmax attention and the one-token step.

Three caches, one per attention mode (all batch entries advance in lockstep):
- KVCache (causal, full): key [B, S, Hkv, D], value [B, S, Hkv, Dv] for positions 0..S-1; grows
  by one per token; append returns a new cache (torch.cat, O(S) per step), like seqmodels.state's.
- WindowCache (sliding window w): ring buffers key [B, w, Hkv, D], value [B, w, Hkv, Dv]; the key
  at absolute position p lives in slot p % w; `seen_tokens` = tokens appended so far. Constant size.
- ChunkCache (chunk-local, Mega-chunk c, arXiv 2209.10655 §3.5): buffers key [B, c, Hkv, D],
  value [B, c, Hkv, Dv]; position p lives in slot p % c and only slots of the current chunk are
  valid, so the buffer is logically cleared at every chunk boundary. Constant size.
The two bounded caches are written in place and returned (decoding runs without autograd). `positions()` gives each slot's
absolute position (-1 = empty), e.g. to build a relative-position bias for the step.
`ordered()` returns the valid keys/values in position order with the first position, for
prefill continuation through `attention(..., k_offset=first, q_offset=seen_tokens)`.
Padded batches: `pad_offset` [B] (None = unpadded) counts each row's leading pads; a key at
position p of row b is visible only when p >= pad_offset[b] (`visible_slots()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .extras import Extras
from .sdpa import attention_sdpa


@dataclass
class KVCache:
    """Full causal attention: every key/value so far, positions 0..S-1."""

    key: torch.Tensor  # [B, S, Hkv, D]
    value: torch.Tensor  # [B, S, Hkv, Dv]
    pad_offset: Optional[torch.Tensor] = None  # [B] leading pads per row (module docstring)

    @classmethod
    def from_prefill(cls, key: torch.Tensor, value: torch.Tensor, pad_offset: Optional[torch.Tensor] = None) -> "KVCache":
        """Cache after key [B, T, Hkv, D], value [B, T, Hkv, Dv] of positions 0..T-1 (T may be 0)."""
        return cls(key, value, pad_offset)

    @property
    def seen_tokens(self) -> int:
        """Tokens in the cache (= tokens seen: a full cache keeps them all)."""
        return self.key.shape[1]

    def append(self, key: torch.Tensor, value: torch.Tensor) -> "KVCache":
        """New cache with key [B, n, Hkv, D], value [B, n, Hkv, Dv] appended (torch.cat, O(S) per call)."""
        return KVCache(torch.cat([self.key, key], dim=1), torch.cat([self.value, value], dim=1), self.pad_offset)

    def positions(self) -> torch.Tensor:
        return torch.arange(self.seen_tokens, device=self.key.device)

    def visible_slots(self) -> torch.Tensor:
        return _visible(self.positions(), self.pad_offset)

    def ordered(self) -> Tuple[torch.Tensor, torch.Tensor, int]:
        return self.key, self.value, 0


@dataclass
class _SlotCache:
    key: torch.Tensor  # [B, L, Hkv, D]  (L = window or chunk size)
    value: torch.Tensor  # [B, L, Hkv, Dv]
    seen_tokens: int  # tokens appended so far; position p lives in slot p % L
    pad_offset: Optional[torch.Tensor] = None  # [B] leading pads per row (module docstring)

    @classmethod
    def from_prefill(cls, key: torch.Tensor, value: torch.Tensor, size: int, k_offset: int = 0,
                     pad_offset: Optional[torch.Tensor] = None):
        """Cache after the keys/values of absolute positions k_offset..k_offset+T-1 (key [B, T, Hkv, D])."""
        B, T, Hkv, D = key.shape
        cache = cls(key.new_zeros(B, size, Hkv, D), value.new_zeros(B, size, Hkv, value.shape[3]), k_offset, pad_offset)
        needed = cache._span_after(k_offset + T)
        if needed > T:
            raise ValueError(
                f"key has shape {tuple(key.shape)} starting at position {k_offset}; the cache after position "
                f"{k_offset + T - 1} needs the last {needed} keys (start at position {k_offset + T - needed} or earlier)"
            )
        return cache.append(key, value)

    @property
    def size(self) -> int:
        return self.key.shape[1]

    def copy(self) -> "_SlotCache":
        """A cache that appends without touching this one (append writes the slots in place)."""
        return type(self)(self.key.clone(), self.value.clone(), self.seen_tokens, self.pad_offset)

    def visible_slots(self) -> torch.Tensor:
        """[L] bool (or [B, L] with pad_offset): slots holding a key a query may see."""
        return _visible(self.positions(), self.pad_offset)

    def _span_after(self, seen_tokens: int) -> int:  # number of valid slots once `seen_tokens` tokens are in
        raise NotImplementedError

    def append(self, key: torch.Tensor, value: torch.Tensor) -> "_SlotCache":
        """Write key [B, n, Hkv, D], value [B, n, Hkv, Dv] into their slots IN PLACE; returns self."""
        n = key.shape[1]
        keep = min(n, self.size)  # earlier tokens of this call would be overwritten anyway
        slots = (self.seen_tokens + torch.arange(n - keep, n, device=self.key.device)) % self.size
        self.key[:, slots] = key[:, n - keep :]
        self.value[:, slots] = value[:, n - keep :]
        self.seen_tokens += n
        return self

    def positions(self) -> torch.Tensor:
        """[L] long: absolute position held by each slot, -1 where the slot is not valid."""
        n = self._span_after(self.seen_tokens)
        pos = torch.arange(self.seen_tokens - n, self.seen_tokens, device=self.key.device)
        out = torch.full((self.size,), -1, dtype=torch.long, device=self.key.device)
        out[pos % self.size] = pos
        return out

    def ordered(self) -> Tuple[torch.Tensor, torch.Tensor, int]:
        n = self._span_after(self.seen_tokens)
        slots = torch.arange(self.seen_tokens - n, self.seen_tokens, device=self.key.device) % self.size
        return self.key[:, slots], self.value[:, slots], self.seen_tokens - n


class WindowCache(_SlotCache):
    """Ring buffer of the last `window` keys/values (sliding-window attention)."""

    def _span_after(self, seen_tokens: int) -> int:
        return min(seen_tokens, self.size)


class ChunkCache(_SlotCache):
    """Keys/values of the current chunk only (chunk-local attention); empty after each boundary."""

    def _span_after(self, seen_tokens: int) -> int:
        return (seen_tokens - 1) % self.size + 1 if seen_tokens > 0 else 0


def _visible(positions: torch.Tensor, pad_offset: Optional[torch.Tensor]) -> torch.Tensor:
    """positions [L] (-1 = empty) -> [L] valid slots, or [B, L] real-token slots with pad_offset [B]."""
    if pad_offset is None:
        return positions >= 0
    return (positions >= 0) & (positions[None, :] >= pad_offset[:, None])


def attention_recurrent_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    cache,
    scale: float,
    extras: Extras = Extras(),
) -> Tuple[torch.Tensor, Union[KVCache, WindowCache, ChunkCache]]:
    """Append (k_t, v_t) [B, Hkv, D] to `cache` and attend q_t [B, H, D] over its valid entries -> (o_t [B, H, Dv], cache).

    extras.bias: broadcastable to [B, H, 1, L] over the cache slots (L = cache.key.shape[1] after appending).
    """
    cache = cache.append(k_t.unsqueeze(1), v_t.unsqueeze(1))
    valid = cache.visible_slots()  # [L], or [B, L] for a padded batch
    allowed = valid.unsqueeze(0) if valid.dim() == 1 else valid[:, None, None, :]
    out = attention_sdpa(q_t.unsqueeze(1), cache.key, cache.value, allowed, scale, extras)
    return out.squeeze(1), cache
