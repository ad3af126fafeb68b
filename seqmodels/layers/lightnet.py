"""LightNet token mixer — Qin et al. 2024, "You Only Scan Once", arXiv 2405.21022 (§3).

The additive linear recurrence, per key channel c (instead of a multiplicative decay):

    z_t = log Σ_{j≤t} e^{k_j}            (logcumsumexp; z_t = logaddexp(z_{t-1}, k_t))
    S_t = e^{z_{t-1} - z_t} S_{t-1} + e^{k_t - z_t} v_tᵀ      (per key channel)
        = Σ_{s≤t} (e^{k_s} / Σ_{j≤t} e^{k_j}) v_sᵀ            (a running softmax-weighted sum)
    o_t = S_tᵀ SiLU(q_t) · Dk^{-1/2}

i.e. `gla(SiLU(q), k̃, v, log_decay_k)` with k̃_t = e^{k_t - z_t} and log_decay_t = z_{t-1} - z_t
(<= 0; 0 at the first token, where S_0 = 0). Decoding carries S and z [B, H, Dk]; the step is
z' = logaddexp(z, k_t). Padding positions may hold k = -inf: (-inf) - (-inf) is guarded, such a
position contributes nothing and leaves S and z unchanged; pads of a padded batch get k = -inf
(and v = 0), so they neither write nor decay S. Block (docs/architecture.md §5.5):

    y = W_o( RMSNorm(o) ⊙ swish(x W_g1 W_g2) )     (norm over all heads, low-rank gate)

Paper shapes: head Dk 128 (`head_dim_k`), v of width d_model. MD-TPE / MD-LRPE (the
multi-dimensional positional encodings) are not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.gla import gla_step
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.gla_base import GLAMixer, gla_layer
from seqmodels.modules.norm import RMSNorm
from seqmodels.modules.padding import zero_pads
from seqmodels.modules.options import check_int_option


@dataclass
class LightNetOptions:
    gate_rank: int = 128  # rank of the output gate x W_g1 W_g2

    def __post_init__(self) -> None:
        check_int_option("lightnet", "gate_rank", self.gate_rank)


@dataclass
class LightNetState:
    """kv: S [B, H, Dk, Dv]; log_normalizer: z [B, H, Dk] (-inf before any token)."""

    kv: torch.Tensor
    log_normalizer: torch.Tensor


def additive_gates(k: torch.Tensor, z0: Optional[torch.Tensor] = None):
    """k [B, T, H, Dk] (entries may be -inf), z0 None | [B, H, Dk] -> (k̃, log_decay [B, T, H, Dk], z_T [B, H, Dk]).

    Computed in k's dtype; z0 None means no token seen (the first log-decay is then 0)."""
    z = torch.logcumsumexp(k, dim=1)
    if z0 is not None:
        z = torch.logaddexp(z0[:, None], z)
    first = z[:, :1] if z0 is None else z0[:, None]
    z_prev = torch.cat([first, z[:, :-1]], dim=1)
    empty = torch.isneginf(z)  # nothing but -inf seen in this channel yet
    z_safe = z.masked_fill(empty, 0.0)
    k_tilde = torch.exp(k - z_safe).masked_fill(empty, 0.0)
    log_decay = (z_prev - z_safe).masked_fill(torch.isneginf(z_prev), 0.0)
    return k_tilde, log_decay, z[:, -1]


@register_mixer("lightnet")
class LightNetAttention(GLAMixer):
    Options = LightNetOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        inner_v = self.n_heads * self.dv
        self.gate_down = nn.Linear(cfg.d_model, self.options.gate_rank, bias=False)  # W_g1
        self.gate_up = nn.Linear(self.options.gate_rank, inner_v, bias=False)  # W_g2
        self.norm = RMSNorm(inner_v, cfg.norm_eps)
        self.o_proj = nn.Linear(inner_v, cfg.d_model, bias=False)
        self.scale = self.dk ** -0.5

    def init_state(self, batch_size, device=None, dtype=None) -> LightNetState:
        dtype = compute_dtype(dtype or torch.float32)
        kv = torch.zeros(batch_size, self.n_heads, self.dk, self.dv, device=device, dtype=dtype)
        z = torch.full((batch_size, self.n_heads, self.dk), float("-inf"), device=device, dtype=dtype)
        return LightNetState(kv, z)

    def project(self, x: torch.Tensor):
        """x [..., d] -> SiLU(q), k [..., H, Dk] (raw: the additive gate's input), v [..., H, Dv]."""
        heads = self.split_heads
        return heads(F.silu(self.q_proj(x)), self.dk), heads(self.k_proj(x), self.dk), heads(self.v_proj(x), self.dv)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """W_o(RMSNorm(o) ⊙ swish(x W_g1 W_g2)); o [..., H, Dv], x [..., d]."""
        return self.o_proj(self.norm(o.flatten(-2)) * F.silu(self.gate_up(self.gate_down(x))))

    def forward(self, x, state: LightNetState | None = None, return_state: bool = False, pad_mask=None):
        q, k, v = self.project(x)
        if pad_mask is not None:
            k, v = k.masked_fill(~pad_mask[:, :, None, None], float("-inf")), zero_pads(v, pad_mask)
        z0 = None if state is None else state.log_normalizer
        compute = compute_dtype(x.dtype)
        k_tilde, log_decay, z_last = additive_gates(k.to(compute), None if z0 is None else z0.to(compute))
        o, kv = gla_layer(self.cfg, q, k_tilde.to(x.dtype), v, log_decay.to(x.dtype), self.scale,
                        None if state is None else state.kv, return_state)
        new_state = LightNetState(kv, z_last) if return_state else None
        return self.output(o, x), new_state

    def step(self, x_t, state: LightNetState):
        q, k, v = self.project(x_t)
        z = state.log_normalizer
        k_tilde, log_decay, z_new = additive_gates(k.to(z.dtype)[:, None], z)
        o_t, kv = gla_step(q, k_tilde[:, 0].to(x_t.dtype), v, log_decay_k=log_decay[:, 0].to(x_t.dtype),
                           state=state.kv, scale=self.scale)
        return self.output(o_t, x_t), LightNetState(kv, z_new)
