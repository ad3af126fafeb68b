"""RetNet multi-scale retention — Sun et al. 2023, arXiv 2307.08621, Eqs. 5-8.

Per head h (0-based) with a fixed decay γ_h = 1 - 2^{-5-h} (§2.2, "multi-scale"):

    S_t = γ_h S_{t-1} + k_t v_tᵀ ,   o_t = S_tᵀ q_t                       (Eq. 6, recurrent form)

q_t, k_t carry the rotary phase e^{i n θ} of Eq. 5 (xPos-free: we use the rotate-half rotary of
seqmodels/modules/rope.py) and k is scaled by Dk^{-1/2} (passed to `gla` as `scale`). Eq. 7's
chunkwise form is the chunked `gla` with a constant per-head log-decay ln γ_h given as [B, T, H]
(an expanded view, no copy). The multi-scale block (Eq. 8):

    Y = GroupNorm_h(retention_h(X)) ,   MSR(X) = (swish(X W_G) ⊙ Y) W_O

Decision (docs/architecture.md §5.2): the kernel computes raw retention — no decay-mask row normalization and
no score clamp. The per-head norm that follows makes the output invariant to the positive
per-row scalars of §2.2's normalized forms, so torchscale's normalized retention and ours agree
after the head norm (up to its eps). `head_norm`: "rmsnorm" (torchscale's per-head RMSNorm
without affine, the default) or "groupnorm" (the paper's GroupNorm over heads, with affine).
Paper shapes: head Dk 256, value dimension 2·d_model (`head_dim_v`), FFN 2·d_model.

Rotary schedule (`rotary_schedule`): "rope" (default) is the standard rotary of rope.py,
θ_i = base^{-2i/Dk} with channel i paired with channel i + Dk/2 (rotate-half). "torchscale" is
the released code's (github.com/microsoft/torchscale, torchscale/architecture/retnet.py,
RetNetRelPos and theta_shift): θ_i = base^{-i/(Dk/2-1)} for i = 0..Dk/2-1 (linspace(0, 1) in the
exponent) with channel 2i paired with 2i+1 (rotate-every-two), positions from 0. Set it to load
torchscale RetNet weights: with "rope" their q/k would be rotated by other angles and pairs.
base = cfg.rope_theta (10000 in both).

Decoding state: GLAState (S per head and the rotary position of the next token). Padding: pads
neither write nor decay S; rotary positions count each row's real tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.layers.registry import register_mixer
from seqmodels.modules.gla_base import GLAMixer, GLAState, gla_layer, gla_layer_step, mask_pads, next_gla_state
from seqmodels.modules.norm import RMSNorm
from seqmodels.modules.padding import current_pad_offset, token_positions
from seqmodels.modules.rope import apply_rope, rope_cos_sin

HEAD_NORMS = ("rmsnorm", "groupnorm")
ROTARY_SCHEDULES = ("rope", "torchscale")


@dataclass
class RetNetOptions:
    head_norm: str = "rmsnorm"  # "rmsnorm" (torchscale, no affine) | "groupnorm" (paper Eq. 8)
    rotary: bool = True  # Eq. 5's e^{inθ}
    rotary_schedule: str = "rope"  # "rope" (standard, rotate-half) | "torchscale" (its frequencies, adjacent pairs)

    def __post_init__(self) -> None:
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"mixer_options.retnet.head_norm={self.head_norm!r} is not one of {list(HEAD_NORMS)}")
        if self.rotary_schedule not in ROTARY_SCHEDULES:
            raise ValueError(f"mixer_options.retnet.rotary_schedule={self.rotary_schedule!r} is not one of {list(ROTARY_SCHEDULES)}")


def retention_log_decay(n_heads: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """ln γ_h = ln(1 - 2^{-5-h}) for h = 0..n_heads-1 (arXiv 2307.08621 §2.2), shape [H]."""
    h = torch.arange(n_heads, dtype=torch.float64, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype)


def torchscale_rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """x [B, T, H, D] rotated as torchscale's RetNet: θ_i = base^{-i/(D/2-1)}, pairs (2i, 2i+1):
    (x_{2i}, x_{2i+1}) -> (x_{2i} cos - x_{2i+1} sin, x_{2i+1} cos + x_{2i} sin) at angle n θ_i.
    positions [T] or per row [B, T]. Angles in float64, then x's dtype."""
    half = x.shape[-1] // 2
    theta = base ** -torch.linspace(0, 1, half, dtype=torch.float64, device=x.device)
    angle = (positions.to(torch.float64)[..., None] * theta)[..., None, :]  # [(B,) T, 1, D/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)


@register_mixer("retnet")
class MultiScaleRetention(GLAMixer):
    Options = RetNetOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        inner_v = self.n_heads * self.dv
        self.g_proj = nn.Linear(cfg.d_model, inner_v, bias=False)  # W_G
        self.o_proj = nn.Linear(inner_v, cfg.d_model, bias=False)  # W_O
        if self.options.head_norm == "groupnorm":
            self.head_norm = nn.GroupNorm(self.n_heads, inner_v, eps=cfg.norm_eps)
        else:
            self.head_norm = RMSNorm(self.dv, cfg.norm_eps, elementwise_affine=False)
        self.scale = self.dk ** -0.5  # k / sqrt(Dk)

    @staticmethod
    def check_config(cfg, options) -> None:
        if options.rotary and cfg.dk % 2:
            raise ValueError(f"retnet: rotary (Eq. 5) needs an even head_dim_k, got {cfg.dk}")

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """[H] constant ln γ_h in x's dtype (callers expand it: no copy per token)."""
        return retention_log_decay(self.n_heads, x.dtype, x.device)

    def project(self, x: torch.Tensor, offset: int, pad_offset=None):
        """x [B, T, d] -> q, k [B, T, H, Dk] (rotary at positions offset..offset+T-1, less each row's
        leading pads `pad_offset` [B]), v [B, T, H, Dv]."""
        time = x.shape[1]
        q, k = self.split_heads(self.q_proj(x), self.dk), self.split_heads(self.k_proj(x), self.dk)
        v = self.split_heads(self.v_proj(x), self.dv)
        if self.options.rotary:
            positions = token_positions(offset, time, pad_offset, x.device)
            if self.options.rotary_schedule == "torchscale":
                q, k = (torchscale_rotary(t, positions, self.cfg.rope_theta) for t in (q, k))
            else:
                cos, sin = rope_cos_sin(positions, self.dk, self.cfg.rope_theta, x.dtype)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Eq. 8 after retention: per-head norm, swish(x W_G) gate, W_O. o [..., H, Dv], x [..., d]."""
        if isinstance(self.head_norm, nn.GroupNorm):
            flat = o.reshape(-1, self.n_heads * self.dv)
            normed = self.head_norm(flat).view(o.shape[:-2] + (-1,))
        else:
            normed = self.head_norm(o).flatten(-2)
        return self.o_proj(F.silu(self.g_proj(x)) * normed)

    def forward(self, x, state: GLAState | None = None, return_state: bool = False, pad_mask=None):
        batch, time, _ = x.shape
        offset = 0 if state is None else state.seen_tokens
        q, k, v = self.project(x, offset, current_pad_offset(None if state is None else state.pad_offset, pad_mask))
        log_decay = self.log_decay(x)[None, None, :].expand(batch, time, self.n_heads)
        k, v, log_decay = mask_pads(pad_mask, k, v, log_decay)
        o, kv = gla_layer(self.cfg, q, k, v, log_decay, self.scale, None if state is None else state.kv, return_state)
        new_state = next_gla_state(kv, state, time, pad_mask) if return_state else None
        return self.output(o, x), new_state

    def step(self, x_t, state: GLAState):
        q, k, v = self.project(x_t[:, None], state.seen_tokens, state.pad_offset)
        log_decay = self.log_decay(x_t)[None, :].expand(x_t.shape[0], self.n_heads)
        o_t, state = gla_layer_step(q[:, 0], k[:, 0], v[:, 0], log_decay, self.scale, state)
        return self.output(o_t, x_t), state
