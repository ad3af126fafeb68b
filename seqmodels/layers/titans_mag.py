"""Titans memory as a gate (MAG): sliding-window attention with a persistent prefix, gated by the neural memory.

Behrouz et al. 2024, arXiv 2501.00663 §4.2, Eqs. 26-28:
    x̃ = [p_1 … p_Np] ‖ x                                        (Eq. 26, persistent memory, Eq. 19)
    y = SW-Attn*(x̃)                                              (Eq. 27)
    o = y ⊗ M(x̃)                                                 (Eq. 28)
"⊗ can be any non-linear gating. In our experiments, we normalize the outputs y and M(x̃) using
learnable vector-valued weights, followed by a non-linearity σ(.)" (§4.2). We read this as
    out = W_O (RMSNorm(y) ⊙ σ(RMSNorm(M(x̃))))      (RMSNorm per head with a learned weight vector)
(docs/architecture.md §5.8). SW-Attn*: softmax attention in which each token sees the last `window`
tokens (itself included) plus the Np persistent tokens, which are visible to every query
(Fig. 3b); the persistent tokens' own outputs are dropped. The attention's projections, rotary
positions (on the real tokens, positions 0, 1, …; the persistent keys carry no rotation) and GQA
are the softmax attention mixer's (attn.q_proj/k_proj/v_proj; attn.o_proj is W_O). M is the
Titans memory branch (seqmodels/modules/neural_memory_branch.py, as in titans_memory.py) (q/k/v projections, conv, SiLU, ℓ2-norm, data-dependent
θ, η, α, mini-batch b), which also reads the persistent prefix first (x̃ = [p ‖ x]); the same
persistent tokens feed both branches.
Decoding state (TitansMAGState): a WindowCache ring buffer of the last `window` keys/values and
the memory state (conv tail, M, S, M_{t'}, seen_in_chunk) — constant in T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from seqmodels.kernels.attention import WindowCache, attention, attention_step
from seqmodels.layers.attention import SoftmaxAttention
from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.neural_memory_branch import (LEFT_PADDING_REFUSAL, NeuralMemoryBranch, TitansMemoryOptions,
                                                    TitansMemoryState)
from seqmodels.modules.padding import refuse_padding
from seqmodels.modules.norm import RMSNorm
from seqmodels.modules.options import check_int_option


@dataclass
class TitansMAGOptions(TitansMemoryOptions):
    family: ClassVar[str] = "titans_mag"
    window: int = 64  # sliding-window size of the attention branch (tokens each query sees, itself included)

    def __post_init__(self):
        super().__post_init__()
        check_int_option(self.family, "window", self.window)


@dataclass
class TitansMAGState:
    window: WindowCache  # last `window` keys/values of the attention branch (rotated keys)
    memory: TitansMemoryState


@register_mixer("titans_mag")
class TitansMAG(Mixer):
    Options = TitansMAGOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.memory = NeuralMemoryBranch(cfg, self.options)
        self.attn = SoftmaxAttention(cfg, layer_idx)  # projections, rope, GQA; its o_proj is W_O
        self.attn_norm = RMSNorm(cfg.dv, cfg.norm_eps)
        self.memory_norm = RMSNorm(cfg.dv, cfg.norm_eps)

    @staticmethod
    def check_config(cfg, options) -> None:
        if cfg.dk != cfg.dv:
            raise ValueError(f"titans_mag gates the attention output with the memory read per head: head_dim_k ({cfg.dk}) must equal head_dim_v ({cfg.dv})")
        if cfg.dk % 2:
            raise ValueError(f"rotary embeddings need an even head_dim_k, got {cfg.dk}")

    def init_weights(self) -> None:
        self.memory.reset_special_parameters()

    def _backend(self) -> str:
        return "naive" if self.cfg.kernel_backend == "naive" else "auto"

    def _prefix(self, dtype):
        """Keys/values of the persistent tokens [Np, Hkv, D] (no rotation), or (None, None)."""
        p = self.memory.persistent
        if p.shape[0] == 0:
            return None, None
        shape = (p.shape[0], self.attn.n_kv_heads, self.attn.head_dim)
        return self.attn.k_proj(p).view(shape).to(dtype), self.attn.v_proj(p).view(shape).to(dtype)

    def init_state(self, batch_size, device=None, dtype=None) -> TitansMAGState:
        memory = self.memory.initial_state(batch_size, device, dtype)
        dtype, device = memory.conv_tail.dtype, memory.conv_tail.device
        shape = (batch_size, self.options.window, self.attn.n_kv_heads, self.attn.head_dim)
        cache = WindowCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype), 0)
        return TitansMAGState(cache, memory)

    def _combine(self, attn_out: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        gated = self.attn_norm(attn_out) * torch.sigmoid(self.memory_norm(read))
        return self.attn.o_proj(gated.flatten(-2))

    def forward(self, x, state: Optional[TitansMAGState] = None, return_state: bool = False, pad_mask=None):
        refuse_padding(self.mixer_name, pad_mask, LEFT_PADDING_REFUSAL)  # as titans_memory (its docstring)
        read, memory = self.memory.run(x, None if state is None else state.memory)
        offset = state.window.seen_tokens if state is not None else 0
        q, k, v = self.attn.project(x, offset)
        first = 0
        if state is not None and offset > 0:  # the cached keys/values of positions first..offset-1
            k_past, v_past, first = state.window.ordered()
            k, v = torch.cat([k_past, k], dim=1), torch.cat([v_past, v], dim=1)
        prefix_k, prefix_v = self._prefix(x.dtype)
        out = attention(q, k, v, causal=True, window=self.options.window, q_offset=offset, k_offset=first,
                        prefix_k=prefix_k, prefix_v=prefix_v, backend=self._backend())
        y = self._combine(out, read)
        if not return_state:
            return y, None
        return y, TitansMAGState(WindowCache.from_prefill(k, v, self.options.window, k_offset=first), memory)

    def step(self, x_t, state: TitansMAGState):
        read, memory = self.memory.step(x_t, state.memory)
        q, k, v = self.attn.project(x_t[:, None], state.window.seen_tokens)
        cache = WindowCache(state.window.key.clone(), state.window.value.clone(), state.window.seen_tokens)
        prefix_k, prefix_v = self._prefix(x_t.dtype)
        out, cache = attention_step(q[:, 0], k[:, 0], v[:, 0], cache, prefix_k=prefix_k, prefix_v=prefix_v)
        return self._combine(out, read), TitansMAGState(cache, memory)
