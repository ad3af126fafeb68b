"""Softmax attention, Llama style: the baseline and the linearization teacher.

Vaswani et al. 2017 (arXiv 1706.03762, Eq. 1): softmax(Q K^T / sqrt(d)) V, causal; rotary
positions (Su et al. 2021, arXiv 2104.09864) on q and k; grouped-query attention (Ainslie
et al. 2023, arXiv 2305.13245) when n_kv_heads < n_heads.

Decoding state: a KVCache (grows with T: the cost the linear families remove). Projection
names match Hugging Face's LlamaAttention (q_proj, k_proj, v_proj, o_proj). Padding: pad keys
are masked and rotary positions count each row's real tokens (the cache keeps `pad_offset`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqmodels.kernels.attention import KVCache, attention
from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.padding import current_pad_offset, key_mask_for, token_positions
from seqmodels.modules.rope import apply_rope, rope_cos_sin


@dataclass
class AttentionOptions:
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2; Llama with attention_bias)
    o_bias: bool = False  # bias on the output projection (Llama with attention_bias)
    rope: bool = True


def attention_backend(cfg) -> str:
    """The attention kernel's backend for the model's kernel_backend ("naive" stays the oracle)."""
    return "naive" if cfg.kernel_backend == "naive" else "auto"


@register_mixer("attention")
class SoftmaxAttention(Mixer):
    Options = AttentionOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dk
        if cfg.dk != cfg.dv:
            raise ValueError(f"softmax attention needs head_dim_k == head_dim_v, got {cfg.dk} and {cfg.dv}")
        bias = self.options.qkv_bias
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=self.options.o_bias)

    @staticmethod
    def check_config(cfg, options) -> None:
        if options.rope and cfg.dk % 2:
            raise ValueError(f"rotary embeddings need an even head_dim_k, got {cfg.dk}")

    def init_state(self, batch_size, device=None, dtype=None) -> KVCache:
        shape = (batch_size, 0, self.n_kv_heads, self.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def project(self, x: torch.Tensor, offset: int, pad_offset=None):
        """q [B,T,H,D], k and v [B,T,H_kv,D] with rotary positions offset..offset+T-1 (less each row's
        leading pads `pad_offset` [B])."""
        batch, time, _ = x.shape
        q = self.q_proj(x).view(batch, time, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, time, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, time, self.n_kv_heads, self.head_dim)
        if self.options.rope:
            positions = token_positions(offset, time, pad_offset, x.device)
            cos, sin = rope_cos_sin(positions, self.head_dim, self.cfg.rope_theta, x.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x, state: KVCache | None = None, return_state: bool = False, pad_mask=None):
        batch, time, _ = x.shape
        offset = state.seen_tokens if state is not None else 0
        pad_offset = current_pad_offset(None if state is None else state.pad_offset, pad_mask)
        q, k, v = self.project(x, offset, pad_offset)
        if state is not None:
            k, v = torch.cat([state.key, k], dim=1), torch.cat([state.value, v], dim=1)
        state = KVCache(k, v, pad_offset)
        key_mask = key_mask_for(pad_offset, 0, k.shape[1], pad_mask, x.device)
        out = attention(q, k, v, causal=True, scale=self.head_dim ** -0.5, backend=attention_backend(self.cfg),
                        key_mask=key_mask)
        y = self.o_proj(out.reshape(batch, time, self.n_heads * self.head_dim))
        return y, (state if return_state else None)

    def step(self, x_t, state: KVCache):
        y, state = self.forward(x_t[:, None], state, return_state=True)
        return y[:, 0], state
