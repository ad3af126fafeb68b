"""Lizard attention: gated linear attention over Hedgehog feature maps plus an anchor-window softmax with meta memory.

Lizard, arXiv 2507.09025 (v4) §3-4. No rotary positions. Per query head h (GQA: key/value
head h // (H / Hkv)), with q, k, v the softmax attention's projections (same names and shapes as
seqmodels/layers/attention.py, so `from_attention` copies them):
  global branch (gated linear attention, Hedgehog map with separate learned W_q, W_k per head):
    φ(x) = exp([x W, −x W] − max_f [x W, −x W])                       (2F features; see "stabilization")
    Γ_i = σ(x_i w_γ) per head,  log Γ_i = logsigmoid(x_i w_γ)   (passed to `gla` as log_decay_k [B, T, H])
    S_i = Γ_i S_{i−1} + φ_k(k_i) [v_i, 1]ᵀ,   ŷ_g,i = (φ_q(q_i)ᵀ S_i)[:Dv] / ((φ_q(q_i)ᵀ S_i)[Dv] + eps)
  local branch (anchor window of w tokens, m learned meta-memory logits μ_h,1..m in the denominator):
    ŷ_l,i = Σ_{i−w<j≤i} e^{q_i·k_j/√D} v_j / (Σ_{i−w<j≤i} e^{q_i·k_j/√D} + Σ_r e^{μ_h,r})
  output:  y_i = W_O (ŷ_g,i + α_h ŷ_l,i)   (α learned per head; two separately normalized branches)
Stabilization: the Hedgehog map subtracts its per-token max over the 2F exponents (inside φ, not
detached; the same φ in every form, so forward and step agree). For φ_q the factor cancels in the
global normalization; for φ_k it is part of the learned map (a per-key positive weight).
Training forms (Options global_form): "gla" (the `gla` op with the ones column, backend =
cfg.kernel_backend) or "folded" (§4's hardware trick: the cumulative log gate c_i = Σ_{l≤i} log Γ_l
folded into the feature-map exponents, φ̃_q(q_i) = φ_q(q_i) e^{c_i − c_ref}, φ̃_k(k_j) = φ_k(k_j)
e^{c_ref − c_j}, so the branch is one causal-masked matmul (φ̃_q φ̃_kᵀ ⊙ mask)[V, 1] without a decay
matrix; c_ref = c at the start of each query block of `chunk_size` rows keeps every exponent
≤ the within-block decay, so nothing overflows; equal to "gla" in float64 to 1e-10, tested).
Decoding state (LizardState): S [B, H, 2F, Dv + 1] (values + normalizer) and a WindowCache ring
buffer of the last w keys/values — constant in T. The meta logits are parameters.

Padding: φ_k(k) = 0 and log Γ = 0 at pads (the global state is neither written nor decayed there)
and pad keys are masked in the window (the cache keeps `pad_offset`).
Projections, feature maps and `from_attention` come from seqmodels/modules/hedgehog_window.py
(shared with LoLCATs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.attention import WindowCache, attention, attention_step
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.hedgehog_window import HedgehogWindowBase
from seqmodels.modules.normalized_gla import normalized_gla, normalized_gla_step, zero_state
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import current_pad_offset, keep_state_at_pads, key_mask_for, zero_pads

GLOBAL_FORMS = ("gla", "folded")
EPS = 1e-12  # guards the global normalizer (≥ φ_q(q_i)·φ_k(k_i) > 0, so eps only matters on underflow)
GATE_INIT = 0.99  # initial Γ = σ(b_γ) with w_γ = 0 (our choice; the paper gives none)


@dataclass
class LizardOptions:
    window: int = 128  # w: tokens of the local softmax branch (itself included)
    n_meta: int = 4  # m: learned meta-memory logits in the local denominator (0 = none)
    feature_dim: Optional[int] = None  # F per half of the Hedgehog map (default head_dim_k); φ has 2F dims
    global_form: str = "gla"  # "gla" (chunked op) or "folded" (§4: gate folded into the exponents, one masked matmul)
    qkv_bias: bool = False  # as the teacher attention's (Qwen2)
    o_bias: bool = False

    def __post_init__(self):
        check_int_option("lizard", "window", self.window)
        check_int_option("lizard", "n_meta", self.n_meta, minimum=0)
        check_int_option("lizard", "feature_dim", self.feature_dim, optional=True)
        if self.global_form not in GLOBAL_FORMS:
            raise ValueError(f"global_form must be one of {list(GLOBAL_FORMS)}, got {self.global_form!r}")


@dataclass
class LizardState:
    global_state: torch.Tensor  # [B, H, 2F, Dv + 1]: S and its normalizer column
    window: WindowCache  # last w keys/values [B, w, Hkv, *]


def hedgehog_exp(u: torch.Tensor) -> torch.Tensor:
    """Lizard's map: exp([u, −u] − max) over the last dim, u [..., F] -> [..., 2F]."""
    z = torch.cat([u, -u], dim=-1)
    return torch.exp(z - z.amax(dim=-1, keepdim=True))


@register_mixer("lizard")
class LizardAttention(HedgehogWindowBase):
    Options = LizardOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.gate_proj = nn.Linear(cfg.d_model, self.n_heads, bias=True)  # w_γ, b_γ per head
        self.meta_logits = nn.Parameter(torch.zeros(self.n_heads, self.options.n_meta))  # μ [H, m]
        self.alpha = nn.Parameter(torch.ones(self.n_heads))  # α per head
        self.linear_branch_enabled = True  # False zeroes ŷ_global (branch ablation, seqmodels.linearize)
        self.init_weights()

    def init_weights(self) -> None:
        """Feature maps = identity; w_γ = 0, b_γ = logit(0.99) (Γ = 0.99); meta logits μ = 0; α = 1."""
        super().init_weights()
        with torch.no_grad():
            self.gate_proj.weight.zero_()
            self.gate_proj.bias.fill_(math.log(GATE_INIT / (1 - GATE_INIT)))
            self.meta_logits.zero_()
            self.alpha.fill_(1.0)

    def init_state(self, batch_size, device=None, dtype=None) -> LizardState:
        dtype = dtype or self.q_proj.weight.dtype
        device = device or self.q_proj.weight.device
        S = zero_state(batch_size, self.n_heads, 2 * self.feature_dim, self.dv, device, dtype)
        return LizardState(S, self.new_window_cache(batch_size, device, dtype))

    def _sinks(self):
        return self.meta_logits if self.options.n_meta > 0 else None

    def global_inputs(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """φ_q(q), φ_k(k) [.., H, 2F], v per query head [.., H, Dv], log Γ [.., H]."""
        u_q, u_k = self.feature_logits(q, k)
        return hedgehog_exp(u_q), hedgehog_exp(u_k), self.expand_kv(v), F.logsigmoid(self.gate_proj(x))

    def forward(self, x, state: Optional[LizardState] = None, return_state: bool = False, pad_mask=None):
        B, T, _ = x.shape
        q, k, v = self.project(x)
        phi_q, phi_k, v_h, log_gate = self.global_inputs(x, q, k, v)
        phi_k, log_gate = zero_pads(phi_k, pad_mask), keep_state_at_pads(log_gate, pad_mask)
        S0 = None if state is None else state.global_state
        if self.options.global_form == "folded":
            y_global, S = folded_global(phi_q, phi_k, v_h, log_gate, S0, self.cfg.chunk_size)
        else:
            y_global, S = normalized_gla(phi_q, phi_k, v_h, EPS, log_decay_k=log_gate, initial_state=S0,
                                         output_final_state=return_state, chunk_size=self.cfg.chunk_size,
                                         backend=self.cfg.kernel_backend)
        if not self.linear_branch_enabled:
            y_global = torch.zeros_like(y_global)
        offset, first = (state.window.seen_tokens, 0) if state is not None else (0, 0)
        pad_offset = current_pad_offset(None if state is None else state.window.pad_offset, pad_mask)
        if state is not None and offset > 0:  # cached keys/values of positions first..offset-1
            k_past, v_past, first = state.window.ordered()
            k, v = torch.cat([k_past, k], dim=1), torch.cat([v_past, v], dim=1)
        backend = "naive" if self.cfg.kernel_backend == "naive" else "auto"
        y_local = attention(q, k, v, causal=True, window=self.options.window, q_offset=offset, k_offset=first,
                            sink_logits=self._sinks(), backend=backend,
                            key_mask=key_mask_for(pad_offset, first, k.shape[1], pad_mask, x.device))
        y = self.o_proj((y_global.to(x.dtype) + self.alpha[:, None] * y_local).reshape(B, T, -1))
        if not return_state:
            return y, None
        return y, LizardState(S, WindowCache.from_prefill(k, v, self.options.window, k_offset=first, pad_offset=pad_offset))

    def step(self, x_t, state: LizardState):
        q, k, v = (t[:, 0] for t in self.project(x_t[:, None]))
        phi_q, phi_k, v_h, log_gate = self.global_inputs(x_t, q, k, v)
        y_global, S = normalized_gla_step(phi_q, phi_k, v_h, state.global_state, EPS, log_decay_k=log_gate)
        if not self.linear_branch_enabled:
            y_global = torch.zeros_like(y_global)
        y_local, cache = attention_step(q, k, v, state.window.copy(), sink_logits=self._sinks())
        y = self.o_proj((y_global.to(x_t.dtype) + self.alpha[:, None] * y_local).reshape(x_t.shape[0], -1))
        return y, LizardState(S, cache)


def folded_global(phi_q, phi_k, v, log_gate, initial_state, block: int):
    """Lizard §4's folded-gate form of the global branch: φ_q, φ_k [B,T,H,2F], v [B,T,H,Dv], log Γ [B,T,H],
    initial_state None | [B,H,2F,Dv+1] -> (ŷ_g [B,T,H,Dv], final state [B,H,2F,Dv+1]). Query blocks of
    `block` rows, each one masked matmul over all keys up to its end with the gate folded into the features."""
    B, T, H, F2 = phi_q.shape
    work = compute_dtype(phi_q.dtype)
    phi_q, phi_k, log_gate = phi_q.to(work), phi_k.to(work), log_gate.to(work)
    v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1).to(work)  # [B, T, H, Dv+1]
    c = log_gate.cumsum(dim=1)  # c_i = Σ_{l<=i} log Γ_l  [B, T, H]
    outs = []
    for start in range(0, T, block):
        stop = min(T, start + block)
        ref = c[:, start : start + 1]  # c at the block start
        q_fold = phi_q[:, start:stop] * torch.exp(c[:, start:stop] - ref).unsqueeze(-1)  # exponent <= 0
        k_fold = phi_k[:, :stop] * torch.exp(ref - c[:, :stop]).unsqueeze(-1)  # <= within-block decay for j >= start
        scores = torch.einsum("bihf,bjhf->bhij", q_fold, k_fold)
        causal = torch.ones(stop - start, stop, dtype=torch.bool, device=scores.device).tril(start)
        o = torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~causal, 0.0), v1[:, :stop])
        if initial_state is not None:  # e^{c_i} φ_q(q_i)ᵀ S_0
            o = o + torch.einsum("bihf,bhfd->bihd", phi_q[:, start:stop] * torch.exp(c[:, start:stop]).unsqueeze(-1),
                                 initial_state.to(work))
        outs.append(o)
    o = torch.cat(outs, dim=1)
    decay_to_end = torch.exp(c[:, -1:] - c).unsqueeze(-1)  # e^{c_T - c_j} <= 1
    S = torch.einsum("bjhf,bjhd->bhfd", phi_k * decay_to_end, v1)
    if initial_state is not None:
        S = S + torch.exp(c[:, -1])[..., None, None] * initial_state.to(work)  # c[:, -1] is [B, H]
    return o[..., :-1] / (o[..., -1:] + EPS), S
