"""AReLiT: ReLiT with its η·dk × dv state replaced by r cosine-modulated key and value traces.

Pramanik et al., arXiv 2310.15719 (v2: AGaLiTe). Paper text not readable here (no equation
numbers cited); follows docs/architecture.md §5.11 and the authors' code (github.com/subho406/agalite,
src/models/relit/arelit.py). Same features, gates and block wiring as ReLiT
(seqmodels/modules/relit_base.py); with
ω_j = linspace(-π, π, r) and c_j(t) = cos(ω_j t), t = t₀, t₀+1, ... the token's tick
(t₀ = `first_tick`, 2 by default as released: the released memory starts at tick 1 and a
sequence's first token gets tick 2):

    k̃_{j,t} = (1-γ_t) ⊙ k̃_{j,t-1} + c_j(t) γ_t ⊙ φ(k_t)       (j = 1..r, η·dk each)
    ṽ_{j,t} = (1-β_t) ⊙ ṽ_{j,t-1} + c_j(t) β_t ⊙ v_t            (dv each)
    s_t     = (1-γ_t) ⊙ s_{t-1}   + γ_t ⊙ φ(k_t)
    o_t     = (Σ_j ṽ_{j,t} (k̃_{j,t} · φ(q_t)) + eps) / (2r · s_t · φ(q_t) + eps)

(Σ_j c_j(t) c_j(t') ≈ (r/2)·[t = t'] makes Σ_j ṽ_j k̃_jᵀ approximate ReLiT's C_t.) Two `gla`
calls compute it: (A) q = φ(q), k = γ⊙φ(k), v = [c_1(t) .. c_r(t), 1], log_decay_k = log(1-γ):
its state is [k̃_1 .. k̃_r | s] and its output [k̃_j·φ(q)]_j, s·φ(q); (B) q = k = 1 (Dk = 1),
v = [c_j(t) β_t⊙v_t]_j, log_decay_v = log(1-β) per trace: its output is the traces ṽ_{j,t}.
Both defaults reproduce the released code (tests/layers/test_arelit.py checks r = 2..5 against a
token loop of its equations in float64). The tick offset is not a re-parametrization: for r <= 3
the frequencies are 0 and ±π, where shifting every tick by one flips or keeps the sign of both
traces together and the output does not change, but from r = 4 on ω_j t₀ moves the modulation
and the output differs (t₀ = 1 vs 2: 0.07 relative RMS on the random layer of
tests/layers/test_arelit.py at r = 4 and 5). Options:
`first_tick: 1` counts positions from 1;
`numerator_eps: false` drops the eps added to the numerator (it only shifts o_t by
eps / denominator, and makes a token with φ(q_t) = 0 output eps/eps = 1 rather than 0).
Block options (standard / gtrxl) as in ReLiT. Padding: pads write and decay nothing (k = 0 in both
calls, log-decays 0) and the tick t counts each row's real tokens (ArelitState.pad_offset).
Decoding state: ArelitState (k̃ and s [B,H,η·dk,r+1], ṽ [B,H,1,r·dv], seen_tokens), constant in T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.gla import gla, gla_step
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import current_pad_offset, token_positions, zero_pads
from seqmodels.modules.relit_base import ReLiTBase, ReLiTOptions


@dataclass
class AReLiTOptions(ReLiTOptions):
    family: ClassVar[str] = "arelit"
    r: int = 2  # number of cosine frequencies (the released T-Maze config uses 2)
    first_tick: int = 2  # tick of a sequence's first token: 2 as released, 1 = 1-based positions
    numerator_eps: bool = True  # add eps to the numerator as well, as released

    def __post_init__(self):
        super().__post_init__()
        check_int_option(self.family, "r", self.r)
        check_int_option(self.family, "first_tick", self.first_tick)
        if not isinstance(self.numerator_eps, bool):
            raise ValueError(f"mixer_options.{self.family}.numerator_eps must be true or false, got {self.numerator_eps!r}")


@dataclass
class ArelitState:
    key_traces: torch.Tensor  # [B, H, η·dk, r + 1]: k̃_1..k̃_r and s
    value_traces: torch.Tensor  # [B, H, 1, r·dv]: ṽ_1..ṽ_r
    seen_tokens: int = 0
    pad_offset: Optional[torch.Tensor] = None  # [B] leading pads per row of a left-padded prefill


@register_mixer("arelit")
class AReLiT(ReLiTBase):
    Options = AReLiTOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.r = self.options.r

    def modulation(self, seen_tokens: int, time: int, dtype, pad_offset=None) -> torch.Tensor:
        """c_j(t) = cos(ω_j t) for the `time` tokens after `seen_tokens` tokens: t = t₀+seen_tokens ..
        t₀+seen_tokens+time-1 (t₀ = first_tick), less each row's leading pads `pad_offset` [B]:
        [time, r], or [B, time, r] with pad_offset (computed in float64)."""
        device = self.o_proj.weight.device
        omega = torch.linspace(-math.pi, math.pi, self.r, dtype=torch.float64, device=device)
        t = token_positions(seen_tokens, time, pad_offset, device).to(torch.float64) + self.options.first_tick
        return torch.cos(t[..., None] * omega).to(dtype)

    def _gla_inputs(self, x, seen_tokens, pad_offset=None, pad_mask=None):
        B, T, _ = x.shape
        H, dv, r = self.n_heads, self.head_dim_v, self.r
        phi_q, k, v, log_decay_k, log_decay_v = self.features(x, pad_mask)[:5]
        cos = self.modulation(seen_tokens, T, x.dtype, pad_offset).expand(B, T, r)  # [B, T, r]
        a_values = torch.cat([cos, cos.new_ones(B, T, 1)], dim=-1)[:, :, None].expand(B, T, H, r + 1)
        b_values = (v.unsqueeze(-2) * cos[:, :, None, :, None]).reshape(B, T, H, r * dv)
        b_decay = log_decay_v.unsqueeze(-2).expand(B, T, H, r, dv).reshape(B, T, H, r * dv)
        ones = x.new_ones(B, T, H, 1)
        return (phi_q, k, a_values, log_decay_k), (ones, zero_pads(ones, pad_mask), b_values, b_decay)

    def _combine(self, a_out, b_out):
        """o = (Σ_j ṽ_j (k̃_j·φ(q)) [+ eps]) / (2r s·φ(q) + eps) from call A's [.., r+1] and call B's [.., r·dv]."""
        r, eps = self.r, self.options.eps
        traces = b_out.unflatten(-1, (r, self.head_dim_v))
        numerator = (traces * a_out[..., :r, None]).sum(-2)
        if self.options.numerator_eps:
            numerator = numerator + eps
        return numerator / (2 * r * a_out[..., r:] + eps)

    def init_state(self, batch_size, device=None, dtype=None) -> ArelitState:
        sd = compute_dtype(dtype or torch.float32)
        H = self.n_heads
        return ArelitState(
            torch.zeros(batch_size, H, self.feature_dim, self.r + 1, device=device, dtype=sd),
            torch.zeros(batch_size, H, 1, self.r * self.head_dim_v, device=device, dtype=sd),
            0,
        )

    def _mix(self, x, state: ArelitState | None, return_state: bool, pad_mask=None):
        B, T, _ = x.shape
        seen_tokens = state.seen_tokens if state is not None else 0
        pad_offset = current_pad_offset(None if state is None else state.pad_offset, pad_mask)
        (qa, ka, va, gka), (qb, kb, vb, gvb) = self._gla_inputs(x, seen_tokens, pad_offset, pad_mask)
        common = dict(scale=1.0, output_final_state=return_state, chunk_size=self.cfg.chunk_size,
                      backend=self.cfg.kernel_backend)
        a_out, a_state = gla(qa, ka, va, gka, None, initial_state=None if state is None else state.key_traces, **common)
        b_out, b_state = gla(qb, kb, vb, None, gvb, initial_state=None if state is None else state.value_traces, **common)
        y = self.o_proj(self._combine(a_out, b_out).reshape(B, T, -1))
        return y, (ArelitState(a_state, b_state, seen_tokens + T, pad_offset) if return_state else None)

    def _mix_step(self, x_t, state: ArelitState):
        (qa, ka, va, gka), (qb, kb, vb, gvb) = ((t[:, 0] for t in group)
                                                for group in self._gla_inputs(x_t[:, None], state.seen_tokens, state.pad_offset))
        a_out, a_state = gla_step(qa, ka, va, gka, None, state.key_traces, scale=1.0)
        b_out, b_state = gla_step(qb, kb, vb, None, gvb, state.value_traces, scale=1.0)
        y = self.o_proj(self._combine(a_out, b_out).reshape(x_t.shape[0], -1))
        return y, ArelitState(a_state, b_state, state.seen_tokens + 1, state.pad_offset)
