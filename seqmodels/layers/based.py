"""Based linear attention: a 2nd-order Taylor feature map with a running normalizer.

Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
tradeoff" (arXiv 2402.18668, §3.1 and App. on the Taylor map); the Zoology study, Arora et al.
2023 (arXiv 2312.04927).

Per head, q and k are projected to a small feature dim d' (16), then

    φ(x) = [1, x / d'^{1/4}, vec(x xᵀ) / (√2 · √d')]          (1 + d' + d'^2 = 273 dims)
    φ(q)·φ(k) = 1 + a + a²/2 ,  a = q·k / √d'                   (Taylor expansion of e^a)
    o_t = Σ_{s≤t} φ(q_t)·φ(k_s) v_s / (Σ_{s≤t} φ(q_t)·φ(k_s) + eps)

computed with `gla` (no decay, scale 1) and the ones column for the denominator
(normalized_gla). `packing: symmetric` keeps one entry per unordered pair of the outer product
(diagonal x_i²/(√2√d'), off-diagonal x_i x_j/√d'): 1 + d' + d'(d'+1)/2 = 153 dims, the same
kernel with a smaller state. Projection names follow the Based code (q/k/v/out projections, no
biases); v's head dim is `head_dim_v` (d_model / n_heads). eps defaults to the Based code's 1e-12
(the denominator is ≥ t/2 because 1 + a + a²/2 ≥ 1/2, so eps only guards an empty prefix).
Decoding state: S [B, H, feature dims, Dv + 1] (values and normalizer), constant in T. Padding:
φ(k) = 0 at pads, so they add nothing to S or the normalizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.normalized_gla import normalized_gla, normalized_gla_step, zero_state
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import zero_pads

PACKINGS = ("full", "symmetric")


@dataclass
class BasedOptions:
    feature_dim: int = 16  # d': q/k projection size per head before the Taylor map
    packing: str = "full"  # "full" (1 + d' + d'^2) or "symmetric" (1 + d' + d'(d'+1)/2)
    eps: float = 1e-12

    def __post_init__(self):
        check_int_option("based", "feature_dim", self.feature_dim)
        if self.packing not in PACKINGS:
            raise ValueError(f"mixer_options.based.packing must be one of {list(PACKINGS)}, got {self.packing!r}")
        if not self.eps > 0:
            raise ValueError(f"mixer_options.based.eps must be > 0, got {self.eps!r}")


def taylor_feature_dim(feature_dim: int, packing: str = "full") -> int:
    if packing == "full":
        return 1 + feature_dim + feature_dim * feature_dim
    return 1 + feature_dim + feature_dim * (feature_dim + 1) // 2


def taylor_feature_map(x: torch.Tensor, packing: str = "full") -> torch.Tensor:
    """φ(x) for x [..., d'] -> [..., taylor_feature_dim(d', packing)], with φ(x)·φ(y) = 1 + a + a²/2, a = x·y/√d'."""
    d = x.shape[-1]
    outer = x.unsqueeze(-1) * x.unsqueeze(-2)  # [..., d', d']
    if packing == "full":
        second = outer.flatten(-2) / math.sqrt(2 * d)
    else:
        rows, cols = torch.triu_indices(d, d, device=x.device)
        weight = torch.full(rows.shape, 1 / math.sqrt(d), dtype=x.dtype, device=x.device)
        weight[rows == cols] = 1 / math.sqrt(2 * d)
        second = outer[..., rows, cols] * weight
    return torch.cat([x.new_ones(*x.shape[:-1], 1), x / d ** 0.25, second], dim=-1)


@register_mixer("based")
class BasedLinearAttention(Mixer):
    Options = BasedOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts = self.options
        self.n_heads, self.feature_dim, self.head_dim_v = cfg.n_heads, opts.feature_dim, cfg.dv
        self.expanded_dim = taylor_feature_dim(opts.feature_dim, opts.packing)
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.feature_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_heads * self.feature_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_heads * self.head_dim_v, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim_v, cfg.d_model, bias=False)

    @staticmethod
    def check_config(cfg, options) -> None:
        # q/k are projected to feature_dim; an explicit head_dim_k on a pure Based model must agree.
        if cfg.head_dim_k is not None and cfg.mixer_names() == ["based"] and cfg.head_dim_k != options.feature_dim:
            raise ValueError(
                f"head_dim_k={cfg.head_dim_k} does not match mixer_options.based.feature_dim={options.feature_dim}: "
                "Based projects q and k to feature_dim per head (leave head_dim_k unset or make them equal)"
            )

    def features(self, x: torch.Tensor):
        """φ(q), φ(k) [B,T,H,expanded_dim] and v [B,T,H,Dv] for x [B,T,d_model]."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.feature_dim)
        k = self.k_proj(x).view(B, T, self.n_heads, self.feature_dim)
        v = self.v_proj(x).view(B, T, self.n_heads, self.head_dim_v)
        packing = self.options.packing
        return taylor_feature_map(q, packing), taylor_feature_map(k, packing), v

    def init_state(self, batch_size, device=None, dtype=None) -> torch.Tensor:
        return zero_state(batch_size, self.n_heads, self.expanded_dim, self.head_dim_v, device, dtype)

    def forward(self, x, state=None, return_state: bool = False, pad_mask=None):
        B, T, _ = x.shape
        q, k, v = self.features(x)
        k = zero_pads(k, pad_mask)
        o, new_state = normalized_gla(q, k, v, self.options.eps, initial_state=state, output_final_state=return_state,
                                      chunk_size=self.cfg.chunk_size, backend=self.cfg.kernel_backend)
        return self.o_proj(o.reshape(B, T, -1)), new_state

    def step(self, x_t, state):
        q, k, v = (t[:, 0] for t in self.features(x_t[:, None]))
        o, state = normalized_gla_step(q, k, v, state, self.options.eps)
        return self.o_proj(o.reshape(x_t.shape[0], -1)), state
