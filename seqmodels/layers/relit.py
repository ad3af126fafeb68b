"""ReLiT: recurrent linear transformer with learned key and value gates (separable decay).

Pramanik, Elelimy, Machado, White, "Recurrent Linear Transformers" (arXiv 2310.15719; v2 retitled
AGaLiTe, where ReLiT is called GaLiTe). The paper's text was not readable from this environment,
so equation numbers are not cited; the layer follows docs/architecture.md §5.11 and the authors' released code
(github.com/subho406/agalite, src/models/relit/arelit.py: the feature map and gates below).

Per head (x_t the layer input, η the feature expansion, dk/dv the key/value head dims):

    φ(k_t) = vec(relu(p1_t) ⊗ relu(W_k x_t))          p1 = W_p1 x ∈ R^η      (η·dk features)
    φ(q_t) = vec(relu(p2_t) ⊗ relu(W_q x_t))          p2 = W_p2 x ∈ R^η
    γ_t    = vec(σ(p3_t) ⊗ σ(W_γ x_t))                key gate, outer product of sigmoids
    β_t    = σ(W_β x_t) ∈ R^dv                         value gate
    C_t = ((1-β_t)(1-γ_t)ᵀ) ⊙ C_{t-1} + (β_t ⊙ v_t)(γ_t ⊙ φ(k_t))ᵀ
    s_t = (1-γ_t) ⊙ s_{t-1} + γ_t ⊙ φ(k_t)
    o_t = C_t φ(q_t) / (s_t · φ(q_t) + eps)

**Decision:** the separable decay above, not the released ReLiT code's coupled
1 - β γᵀ; it is exactly `gla` with log_decay_k = log(1-γ), log_decay_v = log(1-β), k = γ⊙φ(k),
v = β⊙v, q = φ(q), scale 1, and the normalizer s as the ones column (value decay 0 there, so the
last output column is s_t·φ(q_t)) — see normalized_gla. log(1-β) = logsigmoid(-W_β x);
log(1-γ) = log1mexp(logsigmoid(a) + logsigmoid(b)), finite and ≤ 0 for every input.
Block (`block` option): "standard" = our pre-norm residual block; "gtrxl" = the paper's
attention sublayer wiring x ← g(x, relu(Mixer(Norm(x)))) with GTrXL's GRU gate g (gru_gate.py,
the mixer then owns the residual: residual_in_mixer). The paper also gates its ReLU FFN with a
GRU; here the channel mixer keeps the standard residual (set `mlp` as wanted): a partial port.
Decoding state: S [B, H, η·dk, dv + 1] ([Cᵀ | s]), constant in T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.layers.base import Mixer
from seqmodels.layers.gru_gate import GRUGate
from seqmodels.layers.normalized_gla import normalized_gla, normalized_gla_step, zero_state
from seqmodels.layers.registry import register_mixer
from seqmodels.norm import build_norm


def positive_int_option(family: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"mixer_options.{family}.{name} must be a positive integer, got {value!r}")


BLOCKS = ("standard", "gtrxl")


@dataclass
class ReLiTOptions:
    family: ClassVar[str] = "relit"  # names the options in error messages
    eta: int = 4  # feature expansion η: φ has η · head_dim_k dims
    eps: float = 1e-5  # denominator guard (the released code's value)
    block: str = "standard"  # "standard" residual or "gtrxl" (norm, mixer, relu, GRU gate in place of the residual)

    def __post_init__(self):
        positive_int_option(self.family, "eta", self.eta)
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


@register_mixer("relit")
class ReLiT(Mixer):
    Options = ReLiTOptions

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

    def features(self, x: torch.Tensor):
        """φ(q), γ⊙φ(k) [B,T,H,η·dk], β⊙v [B,T,H,dv], log(1-γ) [B,T,H,η·dk], log(1-β) [B,T,H,dv],
        and the raw gates γ, β (for tests)."""
        B, T, _ = x.shape
        heads = lambda t: t.view(B, T, self.n_heads, -1)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        p1, p2, p3 = heads(self.p_proj(x)).chunk(3, dim=-1)
        beta_logit, gamma_logit = heads(self.beta_proj(x)), heads(self.gamma_proj(x))
        phi_q, phi_k = outer_features(F.relu(p2), F.relu(q)), outer_features(F.relu(p1), F.relu(k))
        log_gamma = (F.logsigmoid(p3).unsqueeze(-1) + F.logsigmoid(gamma_logit).unsqueeze(-2)).flatten(-2)  # log vec(σ(p3)⊗σ(g))
        gamma, beta = log_gamma.exp(), torch.sigmoid(beta_logit)
        return phi_q, gamma * phi_k, beta * v, log1mexp(log_gamma), F.logsigmoid(-beta_logit), gamma, beta

    def init_state(self, batch_size, device=None, dtype=None) -> torch.Tensor:
        return zero_state(batch_size, self.n_heads, self.feature_dim, self.head_dim_v, device, dtype)

    def forward(self, x, state=None, return_state: bool = False):
        if not self.residual_in_mixer:
            return self._mix(x, state, return_state)
        y, state = self._mix(self.in_norm(x), state, return_state)
        return self.gate(x, F.relu(y)), state

    def step(self, x_t, state):
        if not self.residual_in_mixer:
            return self._mix_step(x_t, state)
        y, state = self._mix_step(self.in_norm(x_t), state)
        return self.gate(x_t, F.relu(y)), state

    def _mix(self, x, state, return_state):
        B, T, _ = x.shape
        phi_q, k, v, log_decay_k, log_decay_v = self.features(x)[:5]
        o, new_state = normalized_gla(phi_q, k, v, self.options.eps, log_decay_k, log_decay_v, initial_state=state,
                                      output_final_state=return_state, chunk_size=self.cfg.chunk_size,
                                      backend=self.cfg.kernel_backend)
        return self.o_proj(o.reshape(B, T, -1)), new_state

    def _mix_step(self, x_t, state):
        phi_q, k, v, log_decay_k, log_decay_v = (t[:, 0] for t in self.features(x_t[:, None])[:5])
        o, state = normalized_gla_step(phi_q, k, v, state, self.options.eps, log_decay_k, log_decay_v)
        return self.o_proj(o.reshape(x_t.shape[0], -1)), state
