"""LoLCATs attention: sliding-window softmax plus Hedgehog linear attention over older tokens, one shared normalizer.

Zhang et al. 2024, "LoLCATs: On Low-Rank Linearizing of Large Language Models", arXiv 2410.10254 (§3.1-3.2,
Eq. 6), as its released sliding-window layer computes it (defaults; docs/architecture.md §5.10). Per query head h,
with the softmax attention's q/k/v/o projections (names and shapes of seqmodels/layers/attention.py; GQA) and
q_i, k_j rotated by the teacher's rotary positions (Su et al. 2021, arXiv 2104.09864, Eq. 34) before both branches:
    φ(x) = max([softmax_F(x W), softmax_F(−x W)], 1e-12)       (Hedgehog softmax map, W [Dk, F] per head, 2F dims)
    a_ij = γ_h exp(q_i·k_j/√D − m_i)      for i − w < j ≤ i     (window, m_i = max of these scores)
    b_ij = λ_h φ_q(q_i)·φ_k(k_j)          for j ≤ i − w         (linear attention over tokens that left the window)
    y_i = W_O Σ_j (a_ij + b_ij) v_j / Σ_j (a_ij + b_ij)          (ONE normalizer over both)
γ_h = σ(w_h), σ(w_h) = 0.1 at init (Options window_factor_init). Options, released default first:
    linear_factor  "released": λ_h = 1            | "one_minus_gamma": λ_h = 1 − γ_h (the released code's affine factors)
    rope           True: rotary q/k (rope_theta)  | False: no positions
    feature_dim    64                             | None: F = head_dim_k
    feature_init   "kaiming": kaiming_uniform_ of W [H, Dk, F] (fan_in Dk·F) | "identity": W = I
The window max m_i is part of the definition (as in the released code; it is not cancelled by the shared normalizer,
so forward and step both use the max over exactly the window's scores).
Training form (no state, no pads): blocks of w queries, each scoring keys of its own and the previous block
plus a running φ_k(k)ᵀ[v, 1] state of the blocks before (O(T·w), `_mix_blocked`); with a state or pads, one T × S
masked score matrix (quadratic, like the released training code); the same numbers (tested), every kernel_backend. Decoding state (LolcatsState): S [B, H, 2F, Dv + 1] over the (rotated) keys that left the window
(values + normalizer column) and a WindowCache ring buffer of the last w rotated keys and values — constant in T; a
key is folded into S when its ring slot is overwritten.
Padding: pad keys are masked in the window and have φ_k = 0 (nothing folded into S); rotary positions
count each row's real tokens; the cache keeps `pad_offset`.
Registered as its own mixer `lolcats` (LoLCATs has no gate, no meta logits and a shared normalizer,
so it is not a switch on Lizard); projections, feature maps and `from_attention` come from
seqmodels/modules/hedgehog_window.py (shared with Lizard).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.attention import WindowCache
from seqmodels.kernels.attention.chunk import previous_block
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.hedgehog_window import HedgehogWindowBase
from seqmodels.modules.normalized_gla import zero_state
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import current_pad_offset, key_mask_for, token_positions, zero_pads
from seqmodels.modules.rope import apply_rope, rope_cos_sin

LINEAR_FACTORS = ("released", "one_minus_gamma")
FEATURE_INITS = ("kaiming", "identity")
FEATURE_FLOOR = 1e-12  # the released map clamps φ at this value


@dataclass
class LolcatsOptions:
    window: int = 64  # w: tokens of the softmax window (itself included)
    feature_dim: Optional[int] = 64  # F per half of the Hedgehog map (None: head_dim_k)
    feature_init: str = "kaiming"  # W_q, W_k init: "kaiming" (released) or "identity"
    linear_factor: str = "released"  # linear scores × 1 ("released") or × (1 − γ) ("one_minus_gamma")
    rope: bool = True  # the teacher's rotary positions on q, k before both branches
    window_factor_init: float = 0.1  # γ = σ(w_h) at init
    qkv_bias: bool = False
    o_bias: bool = False

    def __post_init__(self):
        check_int_option("lolcats", "window", self.window)
        check_int_option("lolcats", "feature_dim", self.feature_dim, optional=True)
        for name, allowed in (("linear_factor", LINEAR_FACTORS), ("feature_init", FEATURE_INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"mixer_options.lolcats.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.rope, bool):
            raise ValueError(f"mixer_options.lolcats.rope must be true or false, got {self.rope!r}")
        f = self.window_factor_init
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1:
            raise ValueError(f"window_factor_init must be a number in (0, 1), got {f!r}")


@dataclass
class LolcatsState:
    linear_state: torch.Tensor  # [B, H, 2F, Dv + 1]: Σ φ_k(k_j) [v_j, 1]ᵀ over keys that left the window
    window: WindowCache  # last w keys/values [B, w, Hkv, *]


def hedgehog_softmax(u: torch.Tensor) -> torch.Tensor:
    """LoLCATs' map: max([softmax(u), softmax(−u)], 1e-12) over the last dim, u [..., F] -> [..., 2F]."""
    return torch.cat([u.softmax(dim=-1), (-u).softmax(dim=-1)], dim=-1).clamp(min=FEATURE_FLOOR)


@register_mixer("lolcats")
class LolcatsAttention(HedgehogWindowBase):
    Options = LolcatsOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.window_logit = nn.Parameter(torch.zeros(self.n_heads))  # w_h, γ_h = σ(w_h)
        self.linear_branch_enabled = True  # False drops the linear scores (branch ablation, seqmodels.linearize)
        self.init_weights()

    @staticmethod
    def check_config(cfg, options) -> None:
        if options.rope and cfg.dk % 2:
            raise ValueError(f"mixer_options.lolcats.rope needs an even head_dim_k, got {cfg.dk} (or set rope: false)")

    @classmethod
    def options_from_teacher(cls, attn) -> dict:
        """The teacher's biases and its rotary switch (rope_theta comes with the copied config)."""
        return {**super().options_from_teacher(attn), "rope": attn.options.rope}

    def init_weights(self) -> None:
        """Feature maps: kaiming_uniform_ of W [H, Dk, F] (released) or the identity; w_h = logit(window_factor_init)."""
        super().init_weights()
        f = self.options.window_factor_init
        with torch.no_grad():
            if self.options.feature_init == "kaiming":
                nn.init.kaiming_uniform_(self.feature_q)
                nn.init.kaiming_uniform_(self.feature_k)
            self.window_logit.fill_(math.log(f / (1 - f)))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, offset: int, pad_offset=None):
        """q [B,T,H,Dk], k [B,T,Hkv,Dk] at positions offset..offset+T-1 (less each row's leading pads
        `pad_offset` [B]), rotated when `rope` (else unchanged)."""
        if not self.options.rope:
            return q, k
        positions = token_positions(offset, q.shape[1], pad_offset, q.device)
        cos, sin = rope_cos_sin(positions, self.dk, self.cfg.rope_theta, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def linear_factor(self) -> torch.Tensor:
        """λ_h [H]: 1 (released) or 1 − γ_h."""
        gamma = torch.sigmoid(self.window_logit)
        return torch.ones_like(gamma) if self.options.linear_factor == "released" else 1 - gamma

    def init_state(self, batch_size, device=None, dtype=None) -> LolcatsState:
        dtype = dtype or self.q_proj.weight.dtype
        device = device or self.q_proj.weight.device
        S = zero_state(batch_size, self.n_heads, 2 * self.feature_dim, self.dv, device, dtype)
        return LolcatsState(S, self.new_window_cache(batch_size, device, dtype))

    def _features(self, q, k):
        u_q, u_k = self.feature_logits(q, k)
        return hedgehog_softmax(u_q), hedgehog_softmax(u_k)

    def _mix(self, window_scores, window_mask, values, phi_q, linear_weights, linear_values, S):
        """Shared normalizer over the window's exp-scores and the linear scores (one query row set).
        window_scores/mask [B,H,T,L]; values [B,L,H,Dv]; linear_weights [B,H,T,S'] (already masked) over
        linear_values [B,S',H,Dv+1]; S [B,H,2F,Dv+1] | None. Returns y [B,T,H,Dv]."""
        gamma = torch.sigmoid(self.window_logit)[:, None, None]  # [H, 1, 1]
        lam = self.linear_factor()
        s = window_scores.masked_fill(~window_mask, float("-inf"))
        a = gamma * torch.exp(s - s.amax(dim=-1, keepdim=True))  # every row sees at least its own key
        v1 = torch.cat([values, values.new_ones(*values.shape[:-1], 1)], dim=-1)
        out = torch.einsum("bhtl,blhd->bthd", a, v1)
        if linear_weights is not None and self.linear_branch_enabled:
            out = out + torch.einsum("bhts,bshd->bthd", lam[:, None, None] * linear_weights, linear_values)
        if S is not None and self.linear_branch_enabled:
            out = out + lam.view(1, 1, -1, 1) * torch.einsum("bthf,bhfd->bthd", phi_q, S.to(phi_q.dtype))
        return out[..., :-1] / out[..., -1:]

    def _mix_blocked(self, q, k_h, v1, phi_q, phi_k):
        """The training form without state or pads in O(T·w): forward's T × T masked scores cut into blocks of
        w queries. Query block b (positions bw..bw+w−1, local row r) sees its window in key blocks b−1
        (local column s > r) and b (s ≤ r); its linear keys are block b−1's columns s ≤ r plus every key
        of blocks < b−1, whose φ_k(k)ᵀ[v, 1] sum is a running state. Same terms as `_mix` (one normalizer,
        the max over the window's scores). q, k_h [B,T,H,Dk], v1 [B,T,H,Dv+1] (ones column), φ [B,T,H,2F]
        -> y [B,T,H,Dv]."""
        B, T, H, _ = q.shape
        w = self.options.window
        n = -(-T // w)
        pad = n * w - T  # zero keys/values at the end: later than every real query, never visible to one

        def blocks(t):  # [B, T, H, d] -> [B, n, w, H, d]
            return torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)).unflatten(1, (n, w))

        qb, kb, vb, fqb, fkb = map(blocks, (q, k_h, v1, phi_q, phi_k))
        k_prev, v_prev, fk_prev = previous_block(kb), previous_block(vb), previous_block(fkb)
        r = torch.arange(w, device=q.device)
        earlier = r[None, :] > r[:, None]  # [w, w]: column s > row r (block b−1: in the window)
        real_prev = (torch.arange(n, device=q.device) > 0)[:, None, None]  # [n, 1, 1]: block b−1 exists
        window_mask = torch.cat([(earlier & real_prev), (~earlier).expand(n, w, w)], dim=-1)  # [n, w, 2w]
        scores = torch.einsum("bnrhd,bnshd->bhnrs", qb, torch.cat([k_prev, kb], dim=2)) / math.sqrt(self.dk)
        s = scores.masked_fill(~window_mask, float("-inf"))
        gamma = torch.sigmoid(self.window_logit)[:, None, None, None]  # [H, 1, 1, 1]
        a = gamma * torch.exp(s - s.amax(dim=-1, keepdim=True))
        out = torch.einsum("bhnrs,bnshd->bnrhd", a, torch.cat([v_prev, vb], dim=2))
        if self.linear_branch_enabled:
            lam = self.linear_factor()
            near = torch.einsum("bnrhf,bnshf->bhnrs", fqb, fk_prev).masked_fill(earlier, 0.0)  # s <= r
            block_kv = torch.einsum("bnshf,bnshd->bnhfd", fkb, vb)  # [B, n, H, 2F, Dv+1]
            far = block_kv.cumsum(dim=1)[:, :-2]  # Σ over blocks < b−1, for b >= 2
            far = torch.cat([torch.zeros_like(block_kv[:, : min(n, 2)]), far], dim=1)
            linear = torch.einsum("bhnrs,bnshd->bnrhd", near, v_prev) + torch.einsum("bnrhf,bnhfd->bnrhd", fqb, far)
            out = out + lam[:, None] * linear
        out = out.flatten(1, 2)[:, :T]
        return out[..., :-1] / out[..., -1:]

    def forward(self, x, state: Optional[LolcatsState] = None, return_state: bool = False, pad_mask=None):
        B, T, _ = x.shape
        w = self.options.window
        offset, first = (state.window.seen_tokens, 0) if state is not None else (0, 0)
        pad_offset = current_pad_offset(None if state is None else state.window.pad_offset, pad_mask)
        q, k, v = self.project(x)
        q, k = self.rotate(q, k, offset, pad_offset)
        if state is not None and offset > 0:  # cached keys/values of positions first..offset-1
            k_past, v_past, first = state.window.ordered()
            k, v = torch.cat([k_past, k], dim=1), torch.cat([v_past, v], dim=1)
        phi_q, phi_k = self._features(q, k)
        k_h, v_h = self.expand_kv(k), self.expand_kv(v)
        pos_q = offset + torch.arange(T, device=x.device)[:, None]
        pos_k = first + torch.arange(k.shape[1], device=x.device)[None, :]
        key_mask = key_mask_for(pad_offset, first, k.shape[1], pad_mask, x.device)
        v1 = torch.cat([v_h, v_h.new_ones(*v_h.shape[:-1], 1)], dim=-1)
        S0 = None if state is None else state.linear_state
        if S0 is None and key_mask is None:  # training: blocks of w queries, O(T·w) (same numbers, tested)
            y = self._mix_blocked(q, k_h, v1, phi_q, phi_k)
        else:
            window_mask = (pos_k <= pos_q) & (pos_q - pos_k < w)
            if key_mask is not None:  # pad keys hidden (each query keeps its own key: no empty row)
                window_mask = (window_mask & (key_mask[:, None, None, :] | (pos_k == pos_q)))
                phi_k = zero_pads(phi_k, key_mask)
            linear_mask = pos_k <= pos_q - w
            scores = torch.einsum("bthd,bshd->bhts", q, k_h) / math.sqrt(self.dk)
            linear = torch.einsum("bthf,bshf->bhts", phi_q, phi_k).masked_fill(~linear_mask, 0.0)
            y = self._mix(scores, window_mask, v_h, phi_q, linear, v1, S0)
        y = self.o_proj(y.reshape(B, T, -1))
        if not return_state:
            return y, None
        leaving = (pos_k[0] <= offset + T - 1 - w).to(phi_k.dtype)  # keys out of the window after the last token
        S = torch.einsum("bshf,bshd->bhfd", phi_k * leaving[None, :, None, None], v1)
        S = S.to(compute_dtype(x.dtype))
        if S0 is not None:
            S = S + S0
        return y, LolcatsState(S, WindowCache.from_prefill(k, v, w, k_offset=first, pad_offset=pad_offset))

    def step(self, x_t, state: LolcatsState):
        B = x_t.shape[0]
        w = self.options.window
        q, k, v = self.project(x_t[:, None])
        q, k = (t[:, 0] for t in self.rotate(q, k, state.window.seen_tokens, state.window.pad_offset))
        v = v[:, 0]
        S = state.linear_state
        cache = state.window.copy()
        if cache.seen_tokens >= w:  # the key at position seen_tokens - w leaves the window: fold it into S
            slot = (cache.seen_tokens - w) % w
            k_old, v_old = cache.key[:, slot], self.expand_kv(cache.value[:, slot])
            _, phi_old = self._features(q, k_old)
            if cache.pad_offset is not None:  # a pad leaving the window adds nothing
                phi_old = phi_old * (cache.seen_tokens - w >= cache.pad_offset).to(phi_old.dtype)[:, None, None]
            v1_old = torch.cat([v_old, v_old.new_ones(B, self.n_heads, 1)], dim=-1)
            S = S + torch.einsum("bhf,bhd->bhfd", phi_old, v1_old).to(S.dtype)
        cache.append(k[:, None], v[:, None])
        valid = cache.visible_slots()  # [w], or [B, w] for a padded batch
        valid = valid[None, None, None] if valid.dim() == 1 else valid[:, None, None, :]
        phi_q, _ = self._features(q, k)
        scores = torch.einsum("bhd,blhd->bhl", q, self.expand_kv(cache.key)) / math.sqrt(self.dk)
        y = self._mix(scores[:, :, None], valid, self.expand_kv(cache.value), phi_q[:, None], None, None, S)
        return self.o_proj(y.reshape(B, -1)), LolcatsState(S, cache)
