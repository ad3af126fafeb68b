"""Lightning attention / TransNormerLLM token mixer — Qin et al., arXiv 2307.14995 (TNL, §3.1-3.3)
and arXiv 2401.04658 (Lightning Attention-2, Alg. 1).

Per head h, with a constant decay λ (NormAttention with decay, TNL Eq. 5; Alg. 1's recurrence):

    S_t = λ S_{t-1} + k_t v_tᵀ ,   o_t = S_tᵀ q_t ,   q = SiLU(x W_q), k = SiLU(x W_k), v = x W_v

with scale 1 (no 1/√d) and no denominator: `gla` with a constant per-head log-decay ([B, T, H]
view) and scale=1. Lightning Attention-2's intra/inter-block split is the chunked `gla`.
Output (TNL §3.2, "Gated Linear Attention" + SRMSNorm §3.3):

    y = W_o( SRMSNorm(o) ⊙ u ),   u = x W_u  (no activation),
    SRMSNorm(z) = z / sqrt(mean(z²) + eps) over the concatenated heads (no weight)

The channel mixer SGLU (TNL §3.2) is `mlp: sglu` in the config.

Decision (decay; docs/architecture.md §5.3): `decay_schedule: official` follows the released code,
λ_{h,l} = exp(-s_h·(1 - l/(L-1) + 1e-5)) with s_h the ALiBi slope (2^{-8(h+1)/H} for H a power
of two), l the layer index, L = n_layers (l/(L-1) := 0 when L = 1); `decay_schedule: paper` is
TNL §3.1's λ = exp(-(8h/H)(1 - l/L)) with 0-based h and l (head 0 then has no decay).

Optional LRPE (TNL §3.1, "LRPE-d"): q, k ↦ [x ⊙ cos(θ t), x ⊙ sin(θ t)] with a learnable θ per
(head, channel), so that q_t·k_s = Σ q k cos(θ(t-s)); this doubles Dk, and decoding carries the
position. Decoding state: GLAState (S per head, position).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.layers.registry import register_mixer
from seqmodels.modules.gla_base import GLAMixer, GLAState, gla_layer, gla_layer_step, mask_pads, next_gla_state
from seqmodels.modules.norm import RMSNorm
from seqmodels.modules.padding import current_pad_offset, token_positions

DECAY_SCHEDULES = ("official", "paper")


@dataclass
class LightningOptions:
    decay_schedule: str = "official"  # "official" (released code) | "paper" (TNL §3.1)
    lrpe: bool = False  # learnable relative positional encoding on q, k (doubles Dk)

    def __post_init__(self) -> None:
        if self.decay_schedule not in DECAY_SCHEDULES:
            raise ValueError(
                f"mixer_options.lightning.decay_schedule={self.decay_schedule!r} is not one of {list(DECAY_SCHEDULES)}"
            )


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022, arXiv 2108.12409): 2^{-8(h+1)/H} for H a power of
    two; otherwise those of the nearest lower power of two, then every other slope of twice it."""
    def power_of_two(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    lower = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]


def lightning_log_decay(n_heads: int, layer_idx: int, n_layers: int, schedule: str = "official") -> torch.Tensor:
    """ln λ_{h,l} per head, shape [H] (float64); see the module docstring for both schedules."""
    if schedule == "official":
        depth = layer_idx / (n_layers - 1) if n_layers > 1 else 0.0
        slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float64)
        return -slopes * (1 - depth + 1e-5)
    if schedule == "paper":
        h = torch.arange(n_heads, dtype=torch.float64)
        return -(8 * h / n_heads) * (1 - layer_idx / n_layers)
    raise ValueError(f"decay_schedule={schedule!r} is not one of {list(DECAY_SCHEDULES)}")


@register_mixer("lightning")
class LightningAttention(GLAMixer):
    Options = LightningOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        inner_k, inner_v = self.n_heads * self.dk, self.n_heads * self.dv
        self.u_proj = nn.Linear(cfg.d_model, inner_v, bias=False)  # output gate u
        self.o_proj = nn.Linear(inner_v, cfg.d_model, bias=False)
        self.norm = RMSNorm(inner_v, cfg.norm_eps, elementwise_affine=False)  # SRMSNorm
        if self.options.lrpe:  # θ initialised as TNL's code: 10000^{-2i/(H·Dk)}, i over all channels
            index = torch.arange(inner_k, dtype=torch.float64)
            self.lrpe_theta = nn.Parameter((10000.0 ** (-2.0 * index / inner_k)).view(self.n_heads, self.dk).float())

    @property
    def state_dk(self) -> int:
        return 2 * self.dk if self.options.lrpe else self.dk

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """[H] constant ln λ_{h,l} in x's dtype, computed in float64 (no buffer: nothing to lose on
        meta-device loading; callers expand it, no copy per token)."""
        decay = lightning_log_decay(self.n_heads, self.layer_idx, self.cfg.n_layers, self.options.decay_schedule)
        return decay.to(device=x.device, dtype=x.dtype)

    def _lrpe(self, x: torch.Tensor, offset: int, pad_offset=None) -> torch.Tensor:
        """[B, T, H, Dk] -> [B, T, H, 2 Dk]: [x cos θt, x sin θt] at positions offset..offset+T-1 (less each
        row's leading pads `pad_offset` [B])."""
        positions = token_positions(offset, x.shape[1], pad_offset, x.device).to(x.dtype)
        angle = positions[..., None, None] * self.lrpe_theta.to(x.dtype)
        return torch.cat([x * angle.cos(), x * angle.sin()], dim=-1)

    def project(self, x: torch.Tensor, offset: int, pad_offset=None):
        """x [B, T, d] -> q, k [B, T, H, Dk or 2Dk] (SiLU, then LRPE), v [B, T, H, Dv]."""
        q = self.split_heads(F.silu(self.q_proj(x)), self.dk)
        k = self.split_heads(F.silu(self.k_proj(x)), self.dk)
        v = self.split_heads(self.v_proj(x), self.dv)
        if self.options.lrpe:
            q, k = self._lrpe(q, offset, pad_offset), self._lrpe(k, offset, pad_offset)
        return q, k, v

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """W_o(SRMSNorm(o) ⊙ x W_u); o [..., H, Dv], x [..., d]."""
        return self.o_proj(self.norm(o.flatten(-2)) * self.u_proj(x))

    def forward(self, x, state: GLAState | None = None, return_state: bool = False, pad_mask=None):
        batch, time, _ = x.shape
        offset = 0 if state is None else state.seen_tokens
        q, k, v = self.project(x, offset, current_pad_offset(None if state is None else state.pad_offset, pad_mask))
        log_decay = self.log_decay(x)[None, None, :].expand(batch, time, self.n_heads)
        k, v, log_decay = mask_pads(pad_mask, k, v, log_decay)
        o, kv = gla_layer(self.cfg, q, k, v, log_decay, 1.0, None if state is None else state.kv, return_state)
        new_state = next_gla_state(kv, state, time, pad_mask) if return_state else None
        return self.output(o, x), new_state

    def step(self, x_t, state: GLAState):
        q, k, v = self.project(x_t[:, None], state.seen_tokens, state.pad_offset)
        log_decay = self.log_decay(x_t)[None, :].expand(x_t.shape[0], self.n_heads)
        o_t, state = gla_layer_step(q[:, 0], k[:, 0], v[:, 0], log_decay, 1.0, state)
        return self.output(o_t, x_t), state
