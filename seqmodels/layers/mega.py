"""Mega: moving-average equipped gated attention — Ma et al. 2022, arXiv 2209.10655 (§3.1–3.5, App. A).

One Mega layer (the paper's Fig. 2 block, pre-norm as Mega's LM configurations), on the raw
residual stream x [B, T, d] (`residual_in_mixer = True`: the Block adds nothing):
    x̂  = Norm(x)                                                    (pre-norm, cfg.norm)
    x'  = SiLU(EMA(x̂) + ω ⊙ x̂)                                       (§3.1 Eqs. 2–3 + §3.2: the EMA sub-layer)
          EMA: h_t = p⊙β x_t + (1 − p⊙a) ⊙ h_{t−1}, y_t = h^{-1/2} Σ_n γ_n h_{t,n};  p = σ(δ), a = σ(α)
    v   = SiLU(x̂ W_v + b_v)                                          (§3.2, value)
    [u, z‖r, ĥ] = x' W_mx + b_mx;  u = σ(·) update gate, z = SiLU(·) shared, r = SiLU(·) reset
    q   = κ_q ⊙ z + μ_q,  k = κ_k ⊙ z + μ_k                            (§3.2, shared representation)
    O   = f(q kᵀ / τ + b_rel) v                                        (§3.2/§3.3, single head)
    H   = SiLU(ĥ + (r ⊙ O) W_h + b_h)
    out = x + u ⊙ (H − x)                                              (gated residual)
    out = out + W_2 SiLU(W_1 Norm(out) + b_1) + b_2                    (normalized FFN, §3.3–3.4; optional)
Attention functions (Options.attention): "softmax" — f = softmax over the visible keys,
τ = sqrt(z_dim); "laplace" — f(s) = ½[1 + erf((s − μ)/(σ√2))], μ = √½, σ = √(1/4π), applied
element-wise with τ = the number of visible keys and no normalization (Mega's element attention).
Relative position bias b_rel (Options.rel_pos_bias), both of Mega's kinds: "simple" (default) — one learned scalar per offset i − j; Mega stores 2L − 1 offsets for its
bidirectional use, a causal layer reads only the L offsets 0..L−1, with L = c (Mega-chunk) or
max_seq_len (full attention). "rotary" — b(i, j) = Rot_i(a) · Rot_j(b) for learned a, b ∈ R^z
rotated by sinusoidal angles (Mega's RotaryRelativePositionalBias); it depends on i − j only, so
we evaluate Rot_{i−j}(a) · b, and it has no length limit.
Mega-chunk (§3.5, Options.attention_chunk = c): attention only inside fixed chunks
[mc, (m+1)c) of absolute positions; the EMA crosses chunks. Full attention otherwise.
EMA truncation (Options.ema_truncation = L, default null = none): the EMA as the causal
convolution y_t = Σ_{l<L} K_l x̂_{t−l}, K_l = N^{-1/2} Σ_n γ_n p_n β_n q_n^l, i.e. its kernel cut
to L taps, as fairseq's Mega does (`truncation`, 2,048 by default there, 8,192 in its LM recipe):
set it to load fairseq checkpoints, whose outputs past position L differ from the untruncated EMA.
It runs through `seqmodels.kernels.long_conv` (FFT in training, direct for the naive backend)
and decodes with the last L−1 normalized inputs as the EMA state (O(L·d) per token, bounded).

Decisions (docs/architecture.md §5.7): the EMA runs through `seqmodels.kernels.ema` (FFT kernel for
training, "naive" token loop for the naive backend, `ema_step` for decoding) in float32
(float64 for float64 inputs), log q = log1p(−p·a). The NFFN lives in the layer (Mega's block
is EMA-attention + NFFN), so Mega presets set `mlp: none`; `nffn_hidden: 0` drops it and lets
the config's `mlp` follow instead. Norms are cfg.norm (Mega used LayerNorm/ScaleNorm).
Initialization follows Mega's code: δ, α ~ N(0, 0.2); β ~ N(±1, 0.02) alternating; γ, ω ~ N(0, 1);
κ ~ N(0, 0.02), μ = 0; b_rel ~ N(0, 0.02); linear layers get the model's generic init.
Defaults z_dim = d/2, v_dim = 2d, nffn_hidden = 2d follow Mega's base ratios (HF MegaConfig).

Decoding state (MegaState): the EMA h [B, d, h] plus the attention cache — Mega-chunk: the
current chunk's keys/values (a ChunkCache of c slots, logically cleared at every chunk
boundary), constant in T; full attention: the KV cache (grows with T; with the simple bias T <= max_seq_len).
Padding (decision, docs/architecture.md §4.1): right padding is exact (pads follow every real token);
left padding is refused: Mega-chunk's chunks sit at absolute positions shared by the batch, and the
full-attention form does not mask keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.attention import ChunkCache, KVCache, attention
from seqmodels.kernels.ema import ema, ema_step
from seqmodels.kernels.long_conv import long_conv, long_conv_step
from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.norm import build_norm
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import refuse_padding

ATTENTION_FUNCTIONS = ("softmax", "laplace")
REL_POS_BIASES = ("simple", "rotary")
_LAPLACE_MU = math.sqrt(0.5)
_LAPLACE_SIGMA = math.sqrt(0.25 / math.pi)


@dataclass
class MegaOptions:
    ema_dim: int = 16  # h, the EMA expansion per channel (§3.1)
    z_dim: Optional[int] = None  # shared representation z for q/k; None = d_model // 2
    v_dim: Optional[int] = None  # value / attention-output width; None = 2 * d_model
    attention: str = "softmax"  # "softmax" | "laplace" (§3.3–3.4)
    attention_chunk: Optional[int] = None  # Mega-chunk size c (§3.5); None = full causal attention
    rel_pos_bias: str = "simple"  # "simple" (learned per offset) | "rotary" (Mega's rotary bias)
    nffn_hidden: Optional[int] = None  # normalized FFN hidden width; None = 2 * d_model; 0 = no NFFN
    ema_truncation: Optional[int] = None  # EMA kernel taps L (fairseq's `truncation`); None = untruncated


@dataclass
class MegaState:
    ema: torch.Tensor  # [B, d_model, ema_dim] (with ema_truncation L: the last L-1 inputs [B, L-1, d_model]), float32/float64
    attn: Union[ChunkCache, KVCache]  # key [B, L, 1, z_dim], value [B, L, 1, v_dim]

    @property
    def seen_tokens(self) -> int:
        """Tokens consumed so far (both caches count them)."""
        return self.attn.seen_tokens


def _copy_cache(cache):
    """A cache that appends without touching `cache` (ChunkCache writes its slots in place)."""
    if isinstance(cache, ChunkCache):
        return ChunkCache(cache.key.clone(), cache.value.clone(), cache.seen_tokens)
    return cache  # KVCache.append returns a new cache


def laplace(scores: torch.Tensor) -> torch.Tensor:
    """Mega's laplace attention function ½[1 + erf((s − μ)/(σ√2))], μ = √½, σ = √(1/4π)."""
    return 0.5 * (1.0 + torch.erf((scores - _LAPLACE_MU) / (_LAPLACE_SIGMA * math.sqrt(2.0))))


def kernel_backends(kernel_backend: str) -> tuple[str, str]:
    """(ema backend, attention backend) for cfg.kernel_backend: naive -> the token loop / explicit
    softmax oracles; anything else -> the FFT EMA and SDPA attention."""
    if kernel_backend == "naive":
        return "naive", "naive"
    return "auto", "auto"


class NormalizedFFN(nn.Module):
    """Mega's NFFN (§3.3–3.4, pre-norm): x + W_2 SiLU(W_1 Norm(x) + b_1) + b_2."""

    def __init__(self, cfg, hidden: int):
        super().__init__()
        self.norm = build_norm(cfg)
        self.up_proj = nn.Linear(cfg.d_model, hidden)
        self.down_proj = nn.Linear(hidden, cfg.d_model)

    def forward(self, x):
        return x + self.down_proj(F.silu(self.up_proj(self.norm(x))))


@register_mixer("mega")
class Mega(Mixer):
    Options = MegaOptions
    residual_in_mixer = True

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts = self.options
        d = cfg.d_model
        self.z_dim = opts.z_dim or max(1, d // 2)
        self.v_dim = opts.v_dim or 2 * d
        self.chunk = opts.attention_chunk
        self.max_offset = self.chunk or cfg.max_seq_len  # offsets 0..max_offset-1 have a bias
        self.ema_backend, self.attn_backend = kernel_backends(cfg.kernel_backend)
        self.norm = build_norm(cfg)
        n = opts.ema_dim
        self.ema_delta = nn.Parameter(torch.empty(d, n))  # p = σ(δ)
        self.ema_alpha = nn.Parameter(torch.empty(d, n))  # a = σ(α), q = 1 − p a
        self.ema_beta = nn.Parameter(torch.empty(d, n))  # input expansion β
        self.ema_gamma = nn.Parameter(torch.empty(d, n))  # readout γ
        self.ema_omega = nn.Parameter(torch.empty(d))  # ω, the EMA sub-layer's residual weight
        self.v_proj = nn.Linear(d, self.v_dim)
        self.mx_proj = nn.Linear(d, 2 * d + self.z_dim + self.v_dim)  # [u, z, r, ĥ]
        self.qk_scale = nn.Parameter(torch.empty(2, self.z_dim))  # κ_q, κ_k
        self.qk_offset = nn.Parameter(torch.empty(2, self.z_dim))  # μ_q, μ_k
        self.h_proj = nn.Linear(self.v_dim, d)
        if opts.rel_pos_bias == "simple":
            self.rel_pos_bias = nn.Parameter(torch.empty(self.max_offset))  # bias of offset i − j
        else:
            self.rotary_a = nn.Parameter(torch.empty(self.z_dim))
            self.rotary_b = nn.Parameter(torch.empty(self.z_dim))
        hidden = 2 * d if opts.nffn_hidden is None else opts.nffn_hidden
        self.nffn = NormalizedFFN(cfg, hidden) if hidden > 0 else None
        self.init_weights()

    @staticmethod
    def check_config(cfg, options) -> None:
        for name in ("ema_dim", "z_dim", "v_dim", "attention_chunk", "ema_truncation"):
            check_int_option("mega", name, getattr(options, name), optional=True)
        hidden = options.nffn_hidden
        check_int_option("mega", "nffn_hidden", hidden, minimum=0, optional=True)
        if options.rel_pos_bias not in REL_POS_BIASES:
            raise ValueError(f"mixer_options.mega.rel_pos_bias={options.rel_pos_bias!r} is not one of {list(REL_POS_BIASES)}")
        z_dim = options.z_dim or max(1, cfg.d_model // 2)
        if options.rel_pos_bias == "rotary" and z_dim % 2:
            raise ValueError(f"mixer_options.mega.rel_pos_bias='rotary' needs an even z_dim, got {z_dim}")
        if options.attention not in ATTENTION_FUNCTIONS:
            raise ValueError(f"mixer_options.mega.attention={options.attention!r} is not one of {list(ATTENTION_FUNCTIONS)}")
        if hidden != 0 and cfg.mlp != "none":
            raise ValueError(
                f"mega has its own normalized FFN (mixer_options.mega.nffn_hidden={hidden}) and mlp={cfg.mlp!r} "
                "would add a second one: set mlp: none (Mega's block) or nffn_hidden: 0 (use the config's mlp)"
            )

    def init_weights(self) -> None:
        """Mega's initialization of its own parameters (the linear layers keep the generic init)."""
        with torch.no_grad():
            nn.init.normal_(self.ema_delta, 0.0, 0.2)
            nn.init.normal_(self.ema_alpha, 0.0, 0.2)
            signs = torch.ones(self.ema_beta.shape[1], dtype=self.ema_beta.dtype, device=self.ema_beta.device)
            signs[1::2] = -1.0
            self.ema_beta.normal_(0.0, 0.02).add_(signs)
            nn.init.normal_(self.ema_gamma, 0.0, 1.0)
            nn.init.normal_(self.ema_omega, 0.0, 1.0)
            nn.init.normal_(self.qk_scale, 0.0, 0.02)
            nn.init.zeros_(self.qk_offset)
            for name in ("rel_pos_bias", "rotary_a", "rotary_b"):
                if hasattr(self, name):
                    nn.init.normal_(getattr(self, name), 0.0, 0.02)

    # ------------------------------------------------------------ pieces
    def _ema_params(self, work):
        """(p, log q, β, γ) [d, h] in the work dtype; log q = log1p(−p a) <= 0."""
        p = torch.sigmoid(self.ema_delta.to(work))
        log_q = torch.log1p(-p * torch.sigmoid(self.ema_alpha.to(work)))
        return p, log_q, self.ema_beta.to(work), self.ema_gamma.to(work)

    def _ema_kernel(self, work):
        """K_l = N^{-1/2} Σ_n γ_n p_n β_n q_n^l for l < ema_truncation: [d, L] (fairseq's truncated kernel)."""
        p, log_q, beta, gamma = self._ema_params(work)
        lags = torch.arange(self.options.ema_truncation, device=p.device, dtype=work)
        return torch.einsum("dnl,dn->dl", torch.exp(log_q.unsqueeze(-1) * lags), gamma * p * beta) * gamma.shape[1] ** -0.5

    def _run_ema(self, x_norm, state, return_state: bool):
        """EMA readout [B, T, d] (work dtype) and the new EMA state (h, or the input tail if truncated)."""
        work = compute_dtype(x_norm.dtype)
        h0 = None if state is None else state.ema
        if self.options.ema_truncation is None:
            return ema(x_norm.to(work), *self._ema_params(work), initial_state=h0, output_final_state=return_state,
                       chunk_size=self.cfg.chunk_size, backend=self.ema_backend)
        backend = "naive" if self.ema_backend == "naive" else "auto"
        return long_conv(x_norm.to(work), self._ema_kernel(work), h0, return_state, backend=backend)

    def _gates(self, x_norm, ema_y):
        """From x̂ and the EMA readout: update gate u, q, k, reset r, ĥ (§3.2)."""
        d = self.cfg.d_model
        x_prime = F.silu(ema_y.to(x_norm.dtype) + x_norm * self.ema_omega)
        u, zr, h_hat = torch.split(self.mx_proj(x_prime), [d, self.z_dim + self.v_dim, d], dim=-1)
        z, r = torch.split(F.silu(zr), [self.z_dim, self.v_dim], dim=-1)
        qk = z.unsqueeze(-2) * self.qk_scale + self.qk_offset  # [..., 2, z]
        return torch.sigmoid(u), qk[..., 0, :], qk[..., 1, :], r, h_hat

    def _output(self, x, u, r, attn_out, h_hat):
        mixed = F.silu(h_hat + self.h_proj(r * attn_out))
        out = x + u * (mixed - x)
        return self.nffn(out) if self.nffn is not None else out

    def _bias_by_offset(self, n: int, dtype) -> torch.Tensor:
        """[n] relative-position biases of the offsets i − j = 0..n−1."""
        if self.options.rel_pos_bias == "simple":
            return self.rel_pos_bias[:n].to(dtype)
        half = self.z_dim // 2
        freq = torch.exp(torch.arange(half, device=self.rotary_a.device, dtype=dtype) * (-math.log(10000.0) / half))
        angle = torch.arange(n, device=freq.device, dtype=dtype)[:, None] * freq  # [n, z/2]
        cos, sin = angle.cos(), angle.sin()
        a1, a2 = self.rotary_a.to(dtype).chunk(2)
        rotated = torch.cat([a1 * cos - a2 * sin, a2 * cos + a1 * sin], dim=-1)  # Rot_offset(a)
        return rotated @ self.rotary_b.to(dtype)

    def _check_positions(self, end: int) -> None:
        if self.chunk is None and self.options.rel_pos_bias == "simple" and end > self.cfg.max_seq_len:
            raise ValueError(
                f"mega (full attention) got position {end - 1} but its relative-position bias covers offsets "
                f"< max_seq_len={self.cfg.max_seq_len}; raise max_seq_len or set mixer_options.mega.attention_chunk"
            )

    def _attend(self, q, k, v, q_offset: int):
        """Causal attention of q [N, T, z] (positions q_offset..) over k [N, S, z], v [N, S, v] (positions 0..S-1)."""
        T, S = q.shape[1], k.shape[1]
        pos_q = torch.arange(q_offset, q_offset + T, device=q.device)
        lag = pos_q[:, None] - torch.arange(S, device=q.device)[None, :]
        bias = self._bias_by_offset(q_offset + T, q.dtype)[lag.clamp(0, q_offset + T - 1)]  # [T, S]
        if self.options.attention == "softmax":
            o = attention(q[:, :, None], k[:, :, None], v[:, :, None], causal=True, q_offset=q_offset, bias=bias,
                          scale=self.z_dim ** -0.5, backend=self.attn_backend)
            return o[:, :, 0]
        visible_keys = (pos_q + 1).to(q.dtype)[:, None]  # τ = number of keys each query sees
        weights = laplace(q @ k.transpose(1, 2) / visible_keys + bias) * (lag >= 0)
        return weights @ v

    def _step_attend(self, q_t, cache, seen_tokens: int):
        """q_t [B, z] at position seen_tokens - 1 over the cache's valid slots (its key already appended) -> [B, v]."""
        positions = cache.positions()  # [L], -1 = empty slot
        valid = positions >= 0
        lag = (seen_tokens - 1) - positions
        span = int(lag[valid].max()) + 1  # < c in Mega-chunk
        bias = self._bias_by_offset(span, q_t.dtype)[lag.clamp(0, span - 1)]
        scores = torch.einsum("bz,blz->bl", q_t, cache.key[:, :, 0])
        if self.options.attention == "softmax":
            weights = torch.softmax((scores * self.z_dim ** -0.5 + bias).masked_fill(~valid, float("-inf")), dim=-1)
        else:
            weights = laplace(scores / valid.sum().to(q_t.dtype) + bias) * valid
        return torch.einsum("bl,blv->bv", weights, cache.value[:, :, 0])

    # ----------------------------------------------------------- contract
    def init_state(self, batch_size, device=None, dtype=None) -> MegaState:
        work = compute_dtype(dtype)
        if self.options.ema_truncation is None:
            h = torch.zeros(batch_size, self.cfg.d_model, self.options.ema_dim, device=device, dtype=work)
        else:
            h = torch.zeros(batch_size, self.options.ema_truncation - 1, self.cfg.d_model, device=device, dtype=work)
        slots = self.chunk or 0
        k = torch.zeros(batch_size, slots, 1, self.z_dim, device=device, dtype=dtype)
        v = torch.zeros(batch_size, slots, 1, self.v_dim, device=device, dtype=dtype)
        return MegaState(h, ChunkCache(k, v, 0) if self.chunk else KVCache(k, v))

    def forward(self, x, state: Optional[MegaState] = None, return_state: bool = False, pad_mask=None):
        refuse_padding("mega", pad_mask, "would move its attention chunks (attention_chunk), which sit at absolute "
                       "positions shared by the batch" if self.chunk else "would put pad keys into its attention, which "
                       "does not mask keys")
        batch, time, _ = x.shape
        seen_tokens = 0 if state is None else state.seen_tokens
        self._check_positions(seen_tokens + time)
        x_norm = self.norm(x)
        value = F.silu(self.v_proj(x_norm))
        ema_y, h = self._run_ema(x_norm, state, return_state)
        u, q, k, r, h_hat = self._gates(x_norm, ema_y)

        # keys/values of the current (partial) chunk, or all past keys in full attention
        carried = 0 if state is None else (seen_tokens % self.chunk if self.chunk else seen_tokens)
        if carried:
            k_prev, v_prev, _ = state.attn.ordered()
            k = torch.cat([k_prev[:, -carried:, 0], k], 1)
            value = torch.cat([v_prev[:, -carried:, 0], value], 1)
        if self.chunk is None:
            attn_out = self._attend(q, k, value, q_offset=carried)
        else:  # chunks aligned to absolute positions: the carried keys start a chunk
            c = self.chunk
            length = carried + time
            pad = -length % c
            q_all = F.pad(q, (0, 0, carried, pad))
            k_all, v_all = F.pad(k, (0, 0, 0, pad)), F.pad(value, (0, 0, 0, pad))
            n = (length + pad) // c
            attn_out = self._attend(q_all.reshape(batch * n, c, -1), k_all.reshape(batch * n, c, -1),
                                    v_all.reshape(batch * n, c, -1), q_offset=0)
            attn_out = attn_out.reshape(batch, n * c, -1)[:, carried:length]
        y = self._output(x, u, r, attn_out, h_hat)
        if not return_state:
            return y, None
        first = seen_tokens - carried  # absolute position of k[:, 0]
        k_cache, v_cache = k[:, :, None], value[:, :, None]
        if self.chunk:
            cache = ChunkCache.from_prefill(k_cache, v_cache, self.chunk, k_offset=first)
        else:
            cache = KVCache.from_prefill(k_cache, v_cache)
        return y, MegaState(h, cache)

    def step(self, x_t, state: MegaState):
        seen_tokens = state.seen_tokens + 1
        self._check_positions(seen_tokens)
        x_norm = self.norm(x_t)
        value = F.silu(self.v_proj(x_norm))
        work = compute_dtype(x_t.dtype)
        if self.options.ema_truncation is None:
            ema_y, h = ema_step(x_norm.to(work), *self._ema_params(work), state=state.ema)
        else:
            ema_y, h = long_conv_step(x_norm.to(work), self._ema_kernel(work), state.ema)
        u, q, k, r, h_hat = self._gates(x_norm, ema_y)
        cache = _copy_cache(state.attn)  # the caller's state stays valid (e.g. to branch decoding)
        cache = cache.append(k[:, None, None], value[:, None, None])
        attn_out = self._step_attend(q, cache, seen_tokens)
        return self._output(x_t, u, r, attn_out, h_hat), MegaState(h, cache)
