"""Sliding-window softmax attention: each query sees the last `window` tokens (itself included).

The local-precision component of the Based LM (Arora et al. 2024, arXiv 2402.18668 §3.2: small
windows, 64 in the paper's discussion; the released 360M/1.3B configs use 128-256) and of the
Zoology hybrids (arXiv 2312.04927). Projections, rotary positions and GQA are the
softmax attention mixer's (seqmodels/layers/attention.py, subclassed); the kernel is
`seqmodels.kernels.attention` with `window=w`:

    o_t = Σ_{t-w < s ≤ t} softmax_s(q_t·k_s / √d) v_s

Decoding state: a WindowCache ring buffer of the last w keys/values plus the token count
(constant in T). step() never mutates the state it is given (it copies the w-slot buffers).
Padding: as softmax attention's (masked pad keys, per-row rotary positions); a left-padded row's
window holds its last w real tokens, because its pads all come before them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seqmodels.kernels.attention import WindowCache, attention, attention_step
from seqmodels.layers.attention import AttentionOptions, SoftmaxAttention, attention_backend
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import current_pad_offset, key_mask_for


@dataclass
class SlidingWindowOptions(AttentionOptions):
    window: int = 64

    def __post_init__(self):
        check_int_option("sliding_window", "window", self.window)  # tokens seen per query


@register_mixer("sliding_window")
class SlidingWindowAttention(SoftmaxAttention):
    Options = SlidingWindowOptions

    @property
    def window(self) -> int:
        return self.options.window

    def init_state(self, batch_size, device=None, dtype=None) -> WindowCache:
        shape = (batch_size, self.window, self.n_kv_heads, self.head_dim)
        return WindowCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype), 0)

    def forward(self, x, state: WindowCache | None = None, return_state: bool = False, pad_mask=None):
        batch, time, _ = x.shape
        offset = state.seen_tokens if state is not None else 0
        pad_offset = current_pad_offset(None if state is None else state.pad_offset, pad_mask)
        q, k, v = self.project(x, offset, pad_offset)
        first = 0
        if state is not None and offset > 0:  # prepend the cached keys/values (positions first..offset-1)
            k_past, v_past, first = state.ordered()
            k, v = torch.cat([k_past, k], dim=1), torch.cat([v_past, v], dim=1)
        out = attention(q, k, v, causal=True, window=self.window, q_offset=offset, k_offset=first,
                        scale=self.head_dim ** -0.5, backend=attention_backend(self.cfg),
                        key_mask=key_mask_for(pad_offset, first, k.shape[1], pad_mask, x.device))
        y = self.o_proj(out.reshape(batch, time, self.n_heads * self.head_dim))
        if not return_state:
            return y, None
        return y, WindowCache.from_prefill(k, v, self.window, k_offset=first, pad_offset=pad_offset)

    def step(self, x_t, state: WindowCache):
        q, k, v = self.project(x_t[:, None], state.seen_tokens, state.pad_offset)
        cache = state.copy()
        out, cache = attention_step(q[:, 0], k[:, 0], v[:, 0], cache, scale=self.head_dim ** -0.5)
        return self.o_proj(out.reshape(x_t.shape[0], -1)), cache
