"""Gated linear attention layer — Yang et al. 2023, arXiv 2312.06635, §4.1-4.4.

Per head, with a data-dependent per-key-channel forget gate α_t ∈ (0, 1)^{Dk}:

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ ,   o_t = S_tᵀ q_t · Dk^{-1/2}          (Eqs. 2-3)
    α_t = σ(x_t W_α1 W_α2 + b_α)^{1/τ},  τ = 16, W_α1: d×16, W_α2: 16×Dk     (§4.4, low rank)

so `log_decay_k = logsigmoid(x W_α1 W_α2 + b) / τ` ([B, T, H, Dk], always <= 0). Layer (§4.4):

    y = W_O( RMSNorm_head(o) ⊙ swish(x W_r) )

with q, k of width expand_k·d (default 0.5) and v, r of width expand_v·d (default 1), split
over the heads (4 in the paper). The head RMSNorm weight [Dv] is shared by the heads. The
decoding state is S per head (GLAState).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.layers.registry import register_mixer
from seqmodels.modules.gla_base import (GLAMixer, GLAState, expanded_head_dims, gla_layer, gla_layer_step, mask_pads,
                                       next_gla_state)
from seqmodels.modules.norm import RMSNorm
from seqmodels.modules.options import check_int_option


@dataclass
class GLAOptions:
    expand_k: float = 0.5  # q/k width = expand_k * d_model
    expand_v: float = 1.0  # v/output-gate width = expand_v * d_model
    gate_rank: int = 16  # W_α1: d x 16
    gate_normalizer: float = 16.0  # τ: log α = logsigmoid(.) / τ

    def __post_init__(self) -> None:
        for name in ("expand_k", "expand_v", "gate_normalizer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"mixer_options.gla.{name} must be > 0, got {getattr(self, name)}")
        check_int_option("gla", "gate_rank", self.gate_rank)


@register_mixer("gla")
class GatedLinearAttention(GLAMixer):
    Options = GLAOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts = self.options
        inner_k, inner_v = self.n_heads * self.dk, self.n_heads * self.dv
        self.g_proj = nn.Linear(cfg.d_model, inner_v, bias=False)  # W_r, the output gate
        self.gate_down = nn.Linear(cfg.d_model, opts.gate_rank, bias=False)  # W_α1
        self.gate_up = nn.Linear(opts.gate_rank, inner_k, bias=True)  # W_α2, b_α
        self.head_norm = RMSNorm(self.dv, cfg.norm_eps)
        self.o_proj = nn.Linear(inner_v, cfg.d_model, bias=False)
        self.scale = self.dk ** -0.5

    @staticmethod
    def check_config(cfg, options) -> None:
        expanded_head_dims(cfg, options, "gla")

    def head_dims(self) -> tuple[int, int]:
        return expanded_head_dims(self.cfg, self.options, "gla")

    def project(self, x: torch.Tensor):
        """x [..., d] -> q, k, log_decay_k [..., H, Dk], v [..., H, Dv]."""
        log_decay = F.logsigmoid(self.gate_up(self.gate_down(x))) / self.options.gate_normalizer
        heads = self.split_heads
        return (heads(self.q_proj(x), self.dk), heads(self.k_proj(x), self.dk),
                heads(self.v_proj(x), self.dv), heads(log_decay, self.dk))

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """W_O(RMSNorm_head(o) ⊙ swish(x W_r)); o [..., H, Dv], x [..., d]."""
        return self.o_proj(self.head_norm(o).flatten(-2) * F.silu(self.g_proj(x)))

    def forward(self, x, state: GLAState | None = None, return_state: bool = False, pad_mask=None):
        q, k, v, log_decay = self.project(x)
        k, v, log_decay = mask_pads(pad_mask, k, v, log_decay)
        o, kv = gla_layer(self.cfg, q, k, v, log_decay, self.scale, None if state is None else state.kv, return_state)
        new_state = next_gla_state(kv, state, x.shape[1], pad_mask) if return_state else None
        return self.output(o, x), new_state

    def step(self, x_t, state: GLAState):
        q, k, v, log_decay = self.project(x_t)
        o_t, state = gla_layer_step(q, k, v, log_decay, self.scale, state)
        return self.output(o_t, x_t), state
