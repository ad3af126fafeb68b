"""attention: softmax attention, causal / sliding-window / chunk-local, with prefix tokens, sink logits and bias.

    o = attention(q, k, v, causal=True, window=None, chunk_size=None, q_offset=None, k_offset=0,
                  prefix_k=None, prefix_v=None, sink_logits=None, bias=None, scale=None, backend="auto",
                  key_mask=None)
q [B, T, H, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] (GQA: H a multiple of Hkv) -> o [B, T, H, Dv].
Query i sits at absolute position q_offset + i (default: k_offset + S - T, i.e. the queries are
the last T keys' positions), key j at k_offset + j; see naive.py for the visibility rule.
Modes: causal softmax (Vaswani et al. 2017, Eq. 1); sliding window (each query sees the last
`window` keys including itself: Based/Zoology arXiv 2402.18668 §3, Lizard arXiv 2507.09025 §3,
Titans MAG/MAL arXiv 2501.00663 Eqs. 26-31); chunk-local (Mega-chunk, arXiv 2209.10655 §3.5).
prefix_k/prefix_v [B, P, Hkv, *] (or [P, Hkv, *], broadcast over batch): always-visible tokens
(Titans persistent memory, Eq. 19). sink_logits [H, m]: value-less logits added to the softmax
denominator (Lizard meta-memory). bias: additive, broadcastable to [B, H, T, S] (Mega's relative
position bias). backend: "naive" (explicit softmax, the oracle) | "torch" (SDPA, full T x S mask) |
"local" (chunk.py: SDPA over blocks, O(T·window) / O(T·chunk): causal self-attention without bias) | "auto"
(local where it applies and T > 2 blocks, else torch).
key_mask [B, S] bool (padded batches): only keys marked True are visible, except that each query
always sees the key at its own position (a pad query's output is then finite, and never read); the
block-local form does not apply (the T x S mask form runs).
Decoding: attention_step with KVCache / WindowCache / ChunkCache (recurrent.py); a cache with
`pad_offset` hides each row's leading pads.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .._validate import check_int, check_same_device_dtype, check_shape
from .chunk import attention_local
from .extras import Extras
from .naive import attention_naive, visible_mask
from .recurrent import ChunkCache, KVCache, WindowCache, attention_recurrent_step
from .sdpa import attention_sdpa, attention_sdpa_causal

__all__ = ["attention", "attention_step", "KVCache", "WindowCache", "ChunkCache", "visible_mask"]


def _check_extras(prefix_k, prefix_v, sink_logits, sizes):
    """Validate prefix tokens and sink logits; return the prefix with a batch axis."""
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_k and prefix_v must be given together (got only one of them)")
    if prefix_k is not None:
        if prefix_k.dim() == 3:
            prefix_k = prefix_k.unsqueeze(0).expand(sizes["B"], -1, -1, -1)
        if prefix_v.dim() == 3:
            prefix_v = prefix_v.unsqueeze(0).expand(sizes["B"], -1, -1, -1)
        check_shape("prefix_k", prefix_k, ("B", "P", "Hkv", "D"), sizes)
        check_shape("prefix_v", prefix_v, ("B", "P", "Hkv", "Dv"), sizes)
    if sink_logits is not None:
        check_shape("sink_logits", sink_logits, ("H", None), sizes)
    return prefix_k, prefix_v


def _check_bias(bias, target):
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor) or bias.dim() > 4:
        raise ValueError(f"bias must be a tensor of rank <= 4 broadcastable to {list(target)}")
    try:
        ok = torch.broadcast_shapes(bias.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected a shape broadcastable to [B, H, T, S] = {list(target)}")


def _check_gqa(sizes, q_name="q", k_name="k"):
    H, Hkv = sizes["H"], sizes["Hkv"]
    if H % Hkv != 0:
        raise ValueError(f"{q_name} has {H} heads and {k_name} has {Hkv}; the query heads must be a multiple of the key/value heads (GQA)")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    window: Optional[int] = None,
    chunk_size: Optional[int] = None,
    q_offset: Optional[int] = None,
    k_offset: int = 0,
    prefix_k: Optional[torch.Tensor] = None,
    prefix_v: Optional[torch.Tensor] = None,
    sink_logits: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
    key_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Softmax attention; see the module docstring. Returns o [B, T, H, Dv] in q's dtype."""
    sizes: dict = {}
    check_shape("q", q, ("B", "T", "H", "D"), sizes)
    check_shape("k", k, ("B", "S", "Hkv", "D"), sizes)
    check_shape("v", v, ("B", "S", "Hkv", "Dv"), sizes)
    _check_gqa(sizes)
    prefix_k, prefix_v = _check_extras(prefix_k, prefix_v, sink_logits, sizes)
    check_same_device_dtype({"q": q, "k": k, "v": v, "prefix_k": prefix_k, "prefix_v": prefix_v, "sink_logits": sink_logits, "bias": bias})
    B, T, H, D = q.shape
    S = k.shape[1]
    if window is not None:
        check_int("window", window)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    if not isinstance(k_offset, int) or k_offset < 0:
        raise ValueError(f"k_offset must be a non-negative integer, got {k_offset!r}")
    if q_offset is None:
        q_offset = k_offset + S - T
    if not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be a non-negative integer (default k_offset + S - T = {k_offset + S - T}), got {q_offset!r}")
    _check_bias(bias, (B, H, T, S))
    if key_mask is not None:
        check_shape("key_mask", key_mask, ("B", "S"), sizes)
        if key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be a bool tensor (True = visible key), got dtype {key_mask.dtype}")
    if backend not in ("naive", "torch", "local", "auto"):
        raise ValueError(f"backend must be 'naive', 'torch', 'local' or 'auto', got {backend!r}")
    scale = D ** -0.5 if scale is None else float(scale)
    extras = Extras(bias, prefix_k, prefix_v, sink_logits)
    local_ok = causal and bool(window or chunk_size) and T == S and q_offset == k_offset and bias is None
    if backend == "local" and key_mask is not None:
        raise ValueError("backend='local' does not take a key_mask; use backend='auto' or 'torch' for padded batches")
    local_ok = local_ok and key_mask is None
    if backend == "local" and not local_ok:
        raise ValueError(
            "backend='local' needs causal self-attention with a window or chunk_size, S == T, q_offset == k_offset "
            f"and no bias (got causal={causal}, window={window}, chunk_size={chunk_size}, T={T}, S={S}, "
            f"q_offset={q_offset}, k_offset={k_offset}, bias={'given' if bias is not None else None})"
        )
    if backend == "local" or (backend == "auto" and local_ok and T > 2 * (chunk_size or window)):
        return attention_local(q, k, v, k_offset, window, chunk_size, scale, extras)  # every query sees itself
    plain_causal = causal and window is None and chunk_size is None and T == S and q_offset == k_offset
    if backend != "naive" and plain_causal and extras.is_empty() and key_mask is None:
        return attention_sdpa_causal(q, k, v, scale)
    allowed = visible_mask(T, S, q_offset, k_offset, causal, window, chunk_size, q.device)
    if prefix_k is None and sink_logits is None and T > 0 and not bool(allowed.any(dim=1).all()):
        first = int((~allowed.any(dim=1)).nonzero()[0])
        raise ValueError(
            f"query {first} (position {q_offset + first}) sees no key with keys at positions {k_offset}..{k_offset + S - 1}; "
            "check q_offset / k_offset (or give prefix tokens / sink logits)"
        )
    if key_mask is not None:  # [B, T, S]: real keys, and each query's own position
        own = (q_offset + torch.arange(T, device=q.device))[:, None] == (k_offset + torch.arange(S, device=q.device))[None, :]
        allowed = allowed & (key_mask[:, None, :] | own)
    if backend == "naive":
        return attention_naive(q, k, v, allowed, scale, extras)
    return attention_sdpa(q, k, v, allowed if allowed.dim() == 2 else allowed[:, None], scale, extras)


def attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    cache: Union[KVCache, WindowCache, ChunkCache],
    prefix_k: Optional[torch.Tensor] = None,
    prefix_v: Optional[torch.Tensor] = None,
    sink_logits: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, Union[KVCache, WindowCache, ChunkCache]]:
    """One decoding step: append k_t [B, Hkv, D], v_t [B, Hkv, Dv] to `cache` and return (o_t [B, H, Dv],
    cache) for q_t [B, H, D]; KVCache returns a new cache, the bounded caches are updated in place and
    returned. The cache type sets the mode (full / window / chunk-local).
    bias: broadcastable to [B, H, 1, L] over the cache slots after appending (see cache.positions())."""
    if not isinstance(cache, (KVCache, WindowCache, ChunkCache)):
        raise ValueError(f"cache must be a KVCache, WindowCache or ChunkCache, got {type(cache).__name__}")
    sizes: dict = {}
    check_shape("q_t", q_t, ("B", "H", "D"), sizes)
    check_shape("k_t", k_t, ("B", "Hkv", "D"), sizes)
    check_shape("v_t", v_t, ("B", "Hkv", "Dv"), sizes)
    check_shape("cache.key", cache.key, ("B", None, "Hkv", "D"), sizes)
    check_shape("cache.value", cache.value, ("B", None, "Hkv", "Dv"), sizes)
    _check_gqa(sizes, "q_t", "k_t")
    prefix_k, prefix_v = _check_extras(prefix_k, prefix_v, sink_logits, sizes)
    check_same_device_dtype(
        {"q_t": q_t, "k_t": k_t, "v_t": v_t, "cache.key": cache.key, "cache.value": cache.value, "prefix_k": prefix_k,
         "prefix_v": prefix_v, "sink_logits": sink_logits, "bias": bias}
    )
    L = cache.key.shape[1] + (1 if isinstance(cache, KVCache) else 0)
    _check_bias(bias, (sizes["B"], sizes["H"], 1, L))
    scale = q_t.shape[-1] ** -0.5 if scale is None else float(scale)
    return attention_recurrent_step(q_t, k_t, v_t, cache, scale, Extras(bias, prefix_k, prefix_v, sink_logits))
