"""CHELA: short-long convolutions with hardware-efficient linear attention — Liu et al., ICML 2024,
arXiv 2406.08128.

Source note: the paper's method text (§3, Fig. 2) could not be read here (only its abstract and
third-party summaries were reachable). What follows is our reading (docs/architecture.md §5.9) — a Mega-style gated
block (arXiv 2209.10655 §3.2) whose EMA is replaced by short-long convolutions and whose attention
is causal linear attention computed chunk-wise ("tiling": our `gla` op without decay) — and every
detail the summaries do not fix is marked (ours).

On the raw residual stream x [B, T, d] (`residual_in_mixer = True`; the block adds nothing and the
config's `mlp` follows as usual):
    x̂  = Norm(x)                                            pre-norm as in Mega (ours)
    x'  = LongConv(SiLU(ShortConv(x̂)))                       short-long convolutions (summaries' order)
    z   = SiLU(x' W_z + b_z);  q = κ_q ⊙ z + μ_q,  k = κ_k ⊙ z + μ_k     (shared z, as Mega)
    v   = SiLU(x̂ W_v + b_v)
    O   = per head: φ(q_t)ᵀ Σ_{s≤t} φ(k_s) v_sᵀ / (φ(q_t)ᵀ Σ_{s≤t} φ(k_s) + ε)
          φ = elu + 1 and the normalizer (Katharopoulos et al. 2020, arXiv 2006.16236 Eq. 6) (ours);
          computed by `gla` with no decay, the denominator as an appended ones column of v
    r   = SiLU(x' W_r + b_r),  u = σ(x' W_u + b_u)
    H   = SiLU(x' W_h + (r ⊙ O) U_h + b_h)
    y   = u ⊙ H + (1 − u) ⊙ x
Short conv: depthwise, K taps (Options.short_kernel, default 3), with bias. Long conv: depthwise,
length L_k (Options.long_kernel, default max_seq_len), parametrized (ours, SGConv/MRConv-style) as
a free kernel times a learned per-channel exponential decay: K[d, l] = W[d, l] · exp(−l · e^{ρ_d}),
every exponent <= 0; W ~ N(0, 1 − e^{−2λ}) so the initial gain is ≈ 1.

Structural reparameterization: the paper folds a zero-padded short kernel into the long one at
inference. With SiLU *between* the short and the long convolution (the order above) the first
short conv cannot be folded: the two are not linear in sequence. What is foldable is a short kernel
in *parallel* with the long one (RepLKNet/MRConv style): Options.parallel_short_kernel = K_p > 0
adds LongConv(s) + ShortConv_p(s) on the same input s, which equals one long conv with kernel
K + pad(K_p). The layer always runs the folded kernel (one FFT); `branch_outputs` gives the two
branches separately and the tests prove the fold exact.

Long kernel forms (Options.long_kernel_form, ours; decoding decision: docs/architecture.md §5.9): "free" (default) is the decayed free kernel
above; "ssm" makes the long conv a diagonal state-space model, K_l = Re Σ_n C_{d,n} λ_{d,n}^l with
λ = exp(−e^{ρ} + iω), N = Options.ssm_order modes per channel (`seqmodels.kernels.ssm_conv`:
FFT in training, an N-mode recurrent state in decoding). A free kernel has no exact low-order
state (its Hankel spectrum is near full rank at init), so only "ssm" decodes in O(1) per token.
Init of "ssm" (ours): rates e^ρ log-uniform in [1/max_seq_len, 1/2], ω uniform in [0, π],
C ~ N(0, 1/N) per (real, imaginary) part.

Decoding: the short conv's K − 1 inputs, the linear-attention state S [B, H, Dk, Dv + 1]
(normalizer column), and for the long conv — "free": the last L_k − 1 inputs (bounded by L_k,
constant in the generated length), kept as a ring buffer (`long_start` = slot of the oldest input)
that `step` writes in place while autograd is off (copy the state to branch a decode); the kernel `step` uses is cached
(rebuilt when a parameter changes: keyed on the parameters' version counters and storage) unless
autograd is recording, so a step costs one O(L_k·d) dot product. "ssm": h [B, d, N, 2], O(d·N)
per token. Padding: both convolutions get 0 input at pads (a left pad is then the zero tail a
sequence starts from) and k = 0 there, so S and the normalizer skip pads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.gla import gla, gla_step
from seqmodels.kernels.long_conv import long_conv
from seqmodels.kernels.ssm_conv import ssm_conv, ssm_conv_step
from seqmodels.kernels.short_conv import MAX_KERNEL_SIZE, short_conv, short_conv_step
from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.norm import build_norm
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import zero_pads

FEATURE_MAPS = ("elu1", "identity")
LONG_KERNEL_FORMS = ("free", "ssm")


@dataclass
class ChelaOptions:
    short_kernel: int = 3  # K, taps of the short depthwise conv (<= 8)
    long_kernel: Optional[int] = None  # L_k, taps of the long depthwise conv; None = max_seq_len
    parallel_short_kernel: int = 0  # K_p > 0: a short kernel parallel to the long one, folded into it
    feature_map: str = "elu1"  # φ on q and k: "elu1" (elu + 1) | "identity"
    normalize: bool = True  # divide by φ(q)ᵀ Σ φ(k) (+ normalizer_eps)
    normalizer_eps: float = 1e-6
    long_kernel_form: str = "free"  # "free" (decayed free kernel of L_k taps) | "ssm" (N damped complex exponentials)
    ssm_order: int = 16  # N, modes per channel of the "ssm" long kernel


@dataclass
class ChelaState:
    short_tail: torch.Tensor  # [B, K - 1, d_model]: last inputs of the short conv
    long_tail: torch.Tensor  # "free": [B, L_k - 1, d_model] last inputs of the long conv (ring buffer); "ssm": h [B, d_model, N, 2]
    attn: torch.Tensor  # [B, H, Dk, Dv (+1 normalizer column)], float32 (float64 for float64)
    long_start: int = 0  # "free": slot of the oldest input in long_tail (ring buffer start)


def _dot_over_time(inputs: torch.Tensor, taps: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Σ_i inputs[:, i] ⊙ taps[i]: inputs [B, n, d], taps [n, d] -> [B, d], in blocks of rows (the
    product's temporary stays small; einsum transposes both operands: 7.6 ms vs 0.26 ms at n = 4k, d 128)."""
    out = inputs.new_zeros(inputs.shape[0], inputs.shape[2])
    for first in range(0, inputs.shape[1], block):
        out = out + (inputs[:, first:first + block] * taps[first:first + block]).sum(1)
    return out


@register_mixer("chela")
class Chela(Mixer):
    Options = ChelaOptions
    residual_in_mixer = True

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts = self.options
        d, H = cfg.d_model, cfg.n_heads
        self.n_heads, self.dk, self.dv = H, cfg.dk, cfg.dv
        self.long_len = opts.long_kernel or cfg.max_seq_len
        backend = cfg.kernel_backend
        self.conv_backend = "naive" if backend == "naive" else "auto"
        self.gla_backend = backend
        self.norm = build_norm(cfg)
        self.short_weight = nn.Parameter(torch.empty(d, opts.short_kernel))  # tap 0 = current token
        self.short_bias = nn.Parameter(torch.empty(d))
        self.ssm = opts.long_kernel_form == "ssm"
        if self.ssm:
            n = opts.ssm_order
            self.long_log_rate = nn.Parameter(torch.empty(d, n))  # ρ: |λ| = exp(−e^ρ)
            self.long_frequency = nn.Parameter(torch.empty(d, n))  # ω: arg λ
            self.long_coeff = nn.Parameter(torch.empty(d, n, 2))  # C (real, imaginary)
        else:
            self.long_weight = nn.Parameter(torch.empty(d, self.long_len))  # W
            self.long_log_rate = nn.Parameter(torch.empty(d))  # ρ: decay rate λ = e^ρ per step
        self._step_kernel_cache = None  # (key, k_0 [d], reversed taps [L_k - 1, d])
        self.parallel_weight = (
            nn.Parameter(torch.empty(d, opts.parallel_short_kernel)) if opts.parallel_short_kernel else None
        )
        self.v_proj = nn.Linear(d, H * self.dv)
        self.z_proj = nn.Linear(d, H * self.dk)
        self.qk_scale = nn.Parameter(torch.empty(2, H * self.dk))  # κ_q, κ_k
        self.qk_offset = nn.Parameter(torch.empty(2, H * self.dk))  # μ_q, μ_k
        self.gate_proj = nn.Linear(d, 2 * H * self.dv + d)  # [r, u, x' W_h]  (r: H·dv, u: d, h: d)
        self.h_proj = nn.Linear(H * self.dv, d, bias=False)  # U_h (b_h is in gate_proj)
        self.init_weights()

    @staticmethod
    def check_config(cfg, options) -> None:
        check_int_option("chela", "short_kernel", options.short_kernel)
        if options.short_kernel > MAX_KERNEL_SIZE:
            raise ValueError(f"mixer_options.chela.short_kernel={options.short_kernel} exceeds {MAX_KERNEL_SIZE} (short_conv's limit)")
        check_int_option("chela", "long_kernel", options.long_kernel, minimum=2, optional=True)
        if options.long_kernel_form not in LONG_KERNEL_FORMS:
            raise ValueError(f"mixer_options.chela.long_kernel_form={options.long_kernel_form!r} is not one of {list(LONG_KERNEL_FORMS)}")
        check_int_option("chela", "ssm_order", options.ssm_order)
        if options.long_kernel_form == "ssm" and (options.long_kernel is not None or options.parallel_short_kernel):
            raise ValueError(
                "mixer_options.chela: long_kernel and parallel_short_kernel shape the free long kernel; the ssm kernel has "
                "no length and no fold (remove them, or set long_kernel_form: free)"
            )
        check_int_option("chela", "parallel_short_kernel", options.parallel_short_kernel, minimum=0)
        long_len = options.long_kernel or cfg.max_seq_len
        if options.parallel_short_kernel > min(MAX_KERNEL_SIZE, long_len):
            raise ValueError(
                f"mixer_options.chela.parallel_short_kernel={options.parallel_short_kernel} must be <= "
                f"min({MAX_KERNEL_SIZE}, long kernel length {long_len})"
            )
        if options.feature_map not in FEATURE_MAPS:
            raise ValueError(f"mixer_options.chela.feature_map={options.feature_map!r} is not one of {list(FEATURE_MAPS)}")
        if not options.normalizer_eps >= 0:
            raise ValueError(f"mixer_options.chela.normalizer_eps must be >= 0, got {options.normalizer_eps!r}")

    def init_weights(self) -> None:
        """Our choices (the paper's init was not readable): PyTorch's conv init for the short kernel,
        decay rates log-uniform in [1/L_k, 1/2], κ ≈ 1, μ = 0."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.short_weight.shape[1])
            nn.init.uniform_(self.short_weight, -bound, bound)
            nn.init.uniform_(self.short_bias, -bound, bound)
            low, high = math.log(1.0 / self.long_len), math.log(0.5)
            self.long_log_rate.uniform_(low, high)
            if self.ssm:
                self.long_frequency.uniform_(0.0, math.pi)
                self.long_coeff.normal_(0.0, self.options.ssm_order ** -0.5)
            else:
                gain = torch.sqrt(-torch.expm1(-2 * self.long_log_rate.exp()))  # sqrt(1 - e^{-2λ})
                self.long_weight.normal_(0.0, 1.0).mul_(gain[:, None])
            if self.parallel_weight is not None:
                nn.init.normal_(self.parallel_weight, 0.0, 0.02)
            self.qk_scale.normal_(1.0, 0.02)
            nn.init.zeros_(self.qk_offset)

    # ------------------------------------------------------------ pieces
    def ssm_params(self):
        """(ρ, ω, C) of the "ssm" long kernel."""
        return self.long_log_rate, self.long_frequency, self.long_coeff

    def decayed_long_kernel(self) -> torch.Tensor:
        """W ⊙ exp(−l · e^ρ) [d, L_k] (the long branch alone, before folding)."""
        lags = torch.arange(self.long_len, device=self.long_weight.device, dtype=self.long_weight.dtype)
        return self.long_weight * torch.exp(-lags * self.long_log_rate.exp()[:, None])

    def long_kernel(self) -> torch.Tensor:
        """The kernel the layer runs: the decayed long kernel with the parallel short kernel folded in."""
        kernel = self.decayed_long_kernel()
        if self.parallel_weight is not None:
            kernel = kernel + F.pad(self.parallel_weight, (0, self.long_len - self.parallel_weight.shape[1]))
        return kernel

    def branch_outputs(self, s: torch.Tensor):
        """Unfolded structural-reparameterization branches on the long conv's input s [B, T, d]:
        (LongConv(s, decayed kernel), ShortConv_p(s) or None). Their sum == LongConv(s, long_kernel())."""
        long_out, _ = long_conv(s, self.decayed_long_kernel(), backend=self.conv_backend)
        if self.parallel_weight is None:
            return long_out, None
        short_out, _ = short_conv(s, self.parallel_weight, backend=self.conv_backend)
        return long_out, short_out

    def _feature(self, t):
        return F.elu(t) + 1.0 if self.options.feature_map == "elu1" else t

    def _projections(self, x_norm, x_prime):
        """q, k [..., H, Dk] after φ; v [..., H, Dv (+1 ones column)]; r, u, x' W_h + b_h."""
        lead = x_norm.shape[:-1]
        z = F.silu(self.z_proj(x_prime))
        q = self._feature(z * self.qk_scale[0] + self.qk_offset[0]).view(*lead, self.n_heads, self.dk)
        k = self._feature(z * self.qk_scale[1] + self.qk_offset[1]).view(*lead, self.n_heads, self.dk)
        v = F.silu(self.v_proj(x_norm)).view(*lead, self.n_heads, self.dv)
        if self.options.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        hv, d = self.n_heads * self.dv, self.cfg.d_model
        r, u, h = torch.split(self.gate_proj(x_prime), [hv, d, d], dim=-1)
        return q, k, v, F.silu(r), torch.sigmoid(u), h

    def _output(self, x, attn, r, u, h):
        if self.options.normalize:
            attn = attn[..., :-1] / (attn[..., -1:] + self.options.normalizer_eps)
        attn = attn.reshape(*attn.shape[:-2], self.n_heads * self.dv)
        mixed = F.silu(h + self.h_proj(r * attn))
        return u * mixed + (1 - u) * x

    def step_kernel(self, dtype):
        """(k_0 [d], taps [L_k − 1, d] with taps[i] = K[:, L_k − 1 − i]) of long_kernel() in `dtype`: the
        weights of the current input and of the ring buffer's inputs, oldest first. Cached while
        autograd is off, keyed on every kernel parameter's version counter and storage."""
        params = [p for p in (self.long_weight, self.long_log_rate, self.parallel_weight) if p is not None]
        key = (dtype, torch.is_inference_mode_enabled(), *((p._version, p.data_ptr(), p.device) for p in params))
        cached = self._step_kernel_cache
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        kernel = self.long_kernel().to(dtype)
        k0, taps = kernel[:, 0], kernel[:, 1:].flip(-1).T.contiguous()
        if not torch.is_grad_enabled():
            self._step_kernel_cache = (key, k0, taps)
        return k0, taps

    def _long_step(self, s_t, state: ChelaState):
        """The long conv at one token; returns (output [B, d], ring buffer, new start). Writes s_t
        into the ring buffer slot of the oldest input (in place)."""
        k0, taps = self.step_kernel(s_t.dtype)
        tail, start = state.long_tail, state.long_start
        n = tail.shape[1]
        y = s_t * k0 + _dot_over_time(tail[:, start:], taps[: n - start])
        if start:
            y = y + _dot_over_time(tail[:, :start], taps[n - start:])
        if torch.is_grad_enabled():  # autograd saved the buffer for backward: write a copy
            tail = tail.clone()
        tail[:, start] = s_t
        return y, tail, (start + 1) % n

    # ----------------------------------------------------------- contract
    def init_state(self, batch_size, device=None, dtype=None) -> ChelaState:
        d = self.cfg.d_model
        dv = self.dv + (1 if self.options.normalize else 0)
        if self.ssm:
            long_state = torch.zeros(batch_size, d, self.options.ssm_order, 2, device=device, dtype=compute_dtype(dtype))
        else:
            long_state = torch.zeros(batch_size, self.long_len - 1, d, device=device, dtype=dtype)
        return ChelaState(
            torch.zeros(batch_size, self.options.short_kernel - 1, d, device=device, dtype=dtype),
            long_state,
            torch.zeros(batch_size, self.n_heads, self.dk, dv, device=device, dtype=compute_dtype(dtype)),
        )

    def _long_forward(self, s, state: Optional[ChelaState], return_state: bool):
        if self.ssm:
            return ssm_conv(s, *self.ssm_params(), initial_state=None if state is None else state.long_tail,
                            output_final_state=return_state, backend="naive" if self.conv_backend == "naive" else "auto")
        tail = None
        if state is not None:  # the ring buffer in time order
            tail = state.long_tail.roll(-state.long_start, dims=1) if state.long_start else state.long_tail
        return long_conv(s, self.long_kernel().to(s.dtype), initial_state=tail, output_final_state=return_state,
                         backend=self.conv_backend)

    def forward(self, x, state: Optional[ChelaState] = None, return_state: bool = False, pad_mask=None):
        x_norm = self.norm(x)
        short_out, short_tail = short_conv(
            zero_pads(x_norm, pad_mask), self.short_weight, self.short_bias,
            initial_state=None if state is None else state.short_tail,
            output_final_state=return_state, backend=self.conv_backend)
        x_prime, long_tail = self._long_forward(zero_pads(F.silu(short_out), pad_mask), state, return_state)
        q, k, v, r, u, h = self._projections(x_norm, x_prime)
        k = zero_pads(k, pad_mask)
        attn, attn_state = gla(q, k, v, scale=1.0, initial_state=None if state is None else state.attn,
                               output_final_state=return_state, chunk_size=self.cfg.chunk_size, backend=self.gla_backend)
        y = self._output(x, attn, r, u, h)
        return y, (ChelaState(short_tail, long_tail, attn_state) if return_state else None)

    def step(self, x_t, state: ChelaState):
        x_norm = self.norm(x_t)
        short_out, short_tail = short_conv_step(x_norm, self.short_weight, self.short_bias, state.short_tail)
        if self.ssm:
            x_prime, long_tail = ssm_conv_step(F.silu(short_out), *self.ssm_params(), state.long_tail)
            start = 0
        else:
            x_prime, long_tail, start = self._long_step(F.silu(short_out), state)
        q, k, v, r, u, h = self._projections(x_norm, x_prime)
        attn, attn_state = gla_step(q, k, v, state=state.attn, scale=1.0)
        return self._output(x_t, attn, r, u, h), ChelaState(short_tail, long_tail, attn_state, start)
