"""What ReLiT and AReLiT share (Pramanik et al., arXiv 2310.15719; v2: AGaLiTe): options, the
feature map and gates, and the block wiring. The families (seqmodels/layers/relit.py, arelit.py)
add their state and recurrence; relit.py's docstring writes the features out:

    φ(k_t) = vec(relu(W_p1 x_t) ⊗ relu(W_k x_t)),  φ(q_t) = vec(relu(W_p2 x_t) ⊗ relu(W_q x_t))
    γ_t = vec(σ(W_p3 x_t) ⊗ σ(W_γ x_t)),  β_t = σ(W_β x_t)

Block (`block` option): "standard" = the pre-norm residual block; "gtrxl" = x ← g(x, relu(mix(Norm(x))))
with GTrXL's GRU gate g (gru_gate.py); the mixer then owns the residual (residual_in_mixer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.layers.base import Mixer
from seqmodels.modules.gru_gate import GRUGate
from seqmodels.modules.norm import build_norm
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import zero_pads

BLOCKS = ("standard", "gtrxl")


@dataclass
class ReLiTOptions:
    family: ClassVar[str] = "relit"  # names the options in error messages
    eta: int = 4  # feature expansion η: φ has η · head_dim_k dims
    eps: float = 1e-5  # denominator guard (the released code's value)
    block: str = "standard"  # "standard" residual or "gtrxl" (norm, mixer, relu, GRU gate in place of the residual)

    def __post_init__(self):
        check_int_option(self.family, "eta", self.eta)
        if not self.eps > 0:
            raise ValueError(f"mixer_options.{self.family}.eps must be > 0, got {self.eps!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"mixer_options.{self.family}.block must be one of {list(BLOCKS)}, got {self.block!r}")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate at both ends (Mächler 2012)."""
    near_zero = x > -math.log(2)
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x.clamp(max=-math.log(2)))))


def outer_features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """vec(a ⊗ b): a [..., η], b [..., d] -> [..., η·d] (η outer, d inner)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)


class ReLiTBase(Mixer):
    """Projections W_q, W_k, W_v, W_p1..3, W_β, W_γ, W_O, `features`, and the standard / gtrxl wiring
    around the family's `_mix(x, state, return_state)` and `_mix_step(x_t, state)`."""

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        H, d, self.eta = cfg.n_heads, cfg.d_model, self.options.eta
        self.n_heads, self.head_dim_k, self.head_dim_v = H, cfg.dk, cfg.dv
        self.feature_dim = self.eta * cfg.dk
        self.q_proj = nn.Linear(d, H * cfg.dk)
        self.k_proj = nn.Linear(d, H * cfg.dk)
        self.v_proj = nn.Linear(d, H * cfg.dv)
        self.p_proj = nn.Linear(d, H * 3 * self.eta)  # p1 (keys), p2 (queries), p3 (key gate)
        self.beta_proj = nn.Linear(d, H * cfg.dv)
        self.gamma_proj = nn.Linear(d, H * cfg.dk)
        self.o_proj = nn.Linear(H * cfg.dv, d)
        self.residual_in_mixer = self.options.block == "gtrxl"
        if self.residual_in_mixer:
            self.in_norm, self.gate = build_norm(cfg), GRUGate(d)

    def features(self, x: torch.Tensor, pad_mask=None):
        """φ(q), γ⊙φ(k) [B,T,H,η·dk], β⊙v [B,T,H,dv], log(1-γ) [B,T,H,η·dk], log(1-β) [B,T,H,dv],
        and the raw gates γ, β (for tests). At pads (pad_mask False) the key, value and both log-decays
        are 0: the state is neither written nor decayed there."""
        B, T, _ = x.shape
        heads = lambda t: t.view(B, T, self.n_heads, -1)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        p1, p2, p3 = heads(self.p_proj(x)).chunk(3, dim=-1)
        beta_logit, gamma_logit = heads(self.beta_proj(x)), heads(self.gamma_proj(x))
        phi_q, phi_k = outer_features(F.relu(p2), F.relu(q)), outer_features(F.relu(p1), F.relu(k))
        log_gamma = (F.logsigmoid(p3).unsqueeze(-1) + F.logsigmoid(gamma_logit).unsqueeze(-2)).flatten(-2)  # log vec(σ(p3)⊗σ(g))
        gamma, beta = log_gamma.exp(), torch.sigmoid(beta_logit)
        k_in, v_in, log_decay_k, log_decay_v = (zero_pads(t, pad_mask) for t in (
            gamma * phi_k, beta * v, log1mexp(log_gamma), F.logsigmoid(-beta_logit)))
        return phi_q, k_in, v_in, log_decay_k, log_decay_v, gamma, beta

    def forward(self, x, state=None, return_state: bool = False, pad_mask=None):
        if not self.residual_in_mixer:
            return self._mix(x, state, return_state, pad_mask)
        y, state = self._mix(self.in_norm(x), state, return_state, pad_mask)
        return self.gate(x, F.relu(y)), state

    def step(self, x_t, state):
        if not self.residual_in_mixer:
            return self._mix_step(x_t, state)
        y, state = self._mix_step(self.in_norm(x_t), state)
        return self.gate(x_t, F.relu(y)), state

    def _mix(self, x, state, return_state, pad_mask):  # pragma: no cover - interface
        raise NotImplementedError

    def _mix_step(self, x_t, state):  # pragma: no cover - interface
        raise NotImplementedError
