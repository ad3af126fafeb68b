"""ViG: bidirectional gated linear attention for images — Liao et al. 2024, arXiv 2405.18425
(§3.2-3.3: BiGLA with direction-wise gating, 2D gating locality injection).

Tokens are the cells of an H×W grid in row-major order (`grid: [H, W]`, or a square grid
inferred from T). Per layer:

    L   = DWConv3×3(x on the H×W grid)  (+ SiLU if `conv_silu`)          (locality injection)
    q, k, v = L W_q, L W_k, L W_v        shared by both directions
    log α^→, log α^← = split(logsigmoid(L W_α1 W_α2 + b) / 16)          (direction-wise gates, 2·Dk)
    o^→ = GLA scan t = 1..T with α^→,   o^← = GLA scan t = T..1 with α^←   (`gla`, reverse=True)
    o   = ½ (o^→ + o^←)                   (the diagonal k_t v_tᵀ counted in both)
    g   = σ(L W_g + b)
    m   = RMSNorm_head(o) ⊙ g + RMSNorm_head(L) ⊙ (1 - g)                        (gated local/global)
    y   = W_o m        (y = W_o SiLU(m) if `out_silu`)

Width of q, k: expand_k·d (0.5); v has width d (expand_v must be 1: L and o share the gate).
Bidirectional: `causal = False`, no step, no decoding state; use it with `head: classify`. A
padded grid is refused (pads are grid cells the 3×3 conv and both scans would read).
Activations, as in the released code (github.com/hustvl/ViG, classification/models/vig.py and
configs/vig/vig-{t,s,b}.yaml): `conv_silu` is the SiLU after the depthwise conv (the released
layer's default is on; the ViG-S and ViG-B configs turn it off, ViG-T keeps it), `out_silu` the
SiLU on the mixed output before W_o (on only in ViG-T). Presets vig-t, vig-s, vig-b set both as
those configs do; our defaults are both off (the S/B setting). Rotary/2D-RoPE variants (the
released `rope_mode`, unset or none in those configs) are not included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.layers.registry import register_mixer
from seqmodels.modules.padding import refuse_padding
from seqmodels.modules.gla_base import GLAMixer, expanded_head_dims, gla_layer
from seqmodels.modules.norm import RMSNorm
from seqmodels.modules.options import check_int_option


@dataclass
class ViGOptions:
    grid: Optional[list] = None  # [H, W] of the token grid; None: square, H = W = sqrt(T)
    expand_k: float = 0.5
    expand_v: float = 1.0  # must be 1: RMSNorm(L) and RMSNorm(o) are mixed channel by channel
    gate_rank: int = 16
    gate_normalizer: float = 16.0
    conv_silu: bool = False  # SiLU after the depthwise conv (released ViG-T: on; ViG-S/B: off)
    out_silu: bool = False  # SiLU on the gated mix before W_o (released ViG-T: on; ViG-S/B: off)
    conv_bias: bool = False

    def __post_init__(self) -> None:
        if self.grid is not None:
            if (not isinstance(self.grid, (list, tuple)) or len(self.grid) != 2
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in self.grid)):
                raise ValueError(f"mixer_options.vig.grid must be [H, W] with positive integers, got {self.grid!r}")
            self.grid = list(self.grid)
        if self.expand_v != 1:
            raise ValueError(f"mixer_options.vig.expand_v must be 1 (o and the local branch L share channels), got {self.expand_v}")
        if self.expand_k <= 0 or self.gate_normalizer <= 0:
            raise ValueError(f"mixer_options.vig: expand_k and gate_normalizer must be > 0, got {self.expand_k}, {self.gate_normalizer}")
        check_int_option("vig", "gate_rank", self.gate_rank)


@register_mixer("vig")
class BidirectionalGLA(GLAMixer):
    causal = False
    Options = ViGOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts = self.options
        inner_k, inner_v = self.n_heads * self.dk, self.n_heads * self.dv
        d = cfg.d_model
        self.local_conv = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d, bias=opts.conv_bias)
        self.gate_down = nn.Linear(d, opts.gate_rank, bias=False)  # W_α1
        self.gate_up = nn.Linear(opts.gate_rank, 2 * inner_k, bias=True)  # W_α2, b: both directions
        self.g_proj = nn.Linear(d, inner_v, bias=True)  # W_g, b
        self.o_norm = RMSNorm(self.dv, cfg.norm_eps)
        self.l_norm = RMSNorm(self.dv, cfg.norm_eps)
        self.o_proj = nn.Linear(inner_v, d, bias=False)
        self.scale = self.dk ** -0.5

    @staticmethod
    def check_config(cfg, options) -> None:
        expanded_head_dims(cfg, options, "vig")

    def head_dims(self) -> tuple[int, int]:
        return expanded_head_dims(self.cfg, self.options, "vig")

    def init_state(self, batch_size, device=None, dtype=None):
        raise ValueError("vig is bidirectional: it has no recurrent state (use head: classify)")

    def grid_shape(self, time: int) -> tuple[int, int]:
        if self.options.grid is not None:
            rows, cols = self.options.grid
            if rows * cols != time:
                raise ValueError(f"vig: the input has T={time} tokens but grid {self.options.grid} holds {rows * cols}")
            return rows, cols
        side = math.isqrt(time)
        if side * side != time:
            raise ValueError(f"vig: T={time} tokens is not a square grid; set mixer_options.vig.grid: [H, W]")
        return side, side

    def locality(self, x: torch.Tensor) -> torch.Tensor:
        """L = DWConv3×3 over the row-major H×W grid: [B, T, d] -> [B, T, d]."""
        batch, time, d = x.shape
        rows, cols = self.grid_shape(time)
        image = x.transpose(1, 2).reshape(batch, d, rows, cols)
        local = self.local_conv(image).flatten(2).transpose(1, 2)
        return F.silu(local) if self.options.conv_silu else local

    def project(self, local: torch.Tensor):
        """L [B, T, d] -> q, k [B, T, H, Dk], v [B, T, H, Dv], forward and backward log-gates [B, T, H, Dk]."""
        heads = self.split_heads
        gates = F.logsigmoid(self.gate_up(self.gate_down(local))) / self.options.gate_normalizer
        forward_gate, backward_gate = gates.chunk(2, dim=-1)
        return (heads(self.q_proj(local), self.dk), heads(self.k_proj(local), self.dk), heads(self.v_proj(local), self.dv),
                heads(forward_gate, self.dk), heads(backward_gate, self.dk))

    def output(self, o: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """W_o[RMSNorm(o) ⊙ g + RMSNorm(L) ⊙ (1 - g)] (SiLU before W_o if out_silu), g = σ(L W_g + b);
        o [B, T, H, Dv], L [B, T, d]."""
        g = torch.sigmoid(self.g_proj(local))
        mixed = self.o_norm(o).flatten(-2) * g + self.l_norm(local.reshape(o.shape)).flatten(-2) * (1 - g)
        return self.o_proj(F.silu(mixed) if self.options.out_silu else mixed)

    def forward(self, x, state=None, return_state: bool = False, pad_mask=None):
        if state is not None or return_state:
            raise ValueError("vig is bidirectional: it has no recurrent state (use head: classify)")
        refuse_padding("vig", pad_mask, "put pad cells into its image grid", left_only=False)
        local = self.locality(x)
        q, k, v, forward_gate, backward_gate = self.project(local)
        o_forward, _ = gla_layer(self.cfg, q, k, v, forward_gate, self.scale, None, False)
        o_backward, _ = gla_layer(self.cfg, q, k, v, backward_gate, self.scale, None, False, reverse=True)
        return self.output((o_forward + o_backward) / 2, local), None
