"""ssm_conv: causal convolution whose kernel is a sum of N damped complex exponentials per channel.

Per channel d and mode n (diagonal state-space model, S4D-style: Gu et al. 2022, arXiv 2206.11893
Eqs. 2-4, with the discrete pole parametrized directly; the same structure as Mega's damped EMA,
arXiv 2209.10655 §3.1, with complex poles):
    λ_n = exp(−e^{ρ_n} + i ω_n)      (|λ_n| < 1 for every ρ: stable by construction)
    h_t = λ ⊙ h_{t−1} + x_t           (h ∈ C^N per channel)
    y_t = Re Σ_n C_n h_{t,n}
equivalently y_t = Σ_{l<=t} K_l x_{t−l} + Re Σ_n C_n λ_n^{t+1} h0_n,  K_l = Re Σ_n C_n λ_n^l.
Parameters: log_rate ρ [D, N], frequency ω [D, N] (0 everywhere gives real exponentials), coeff C
[D, N, 2] (real, imaginary). Backends: "naive" (the sum above, O(T²)), "fft" / "auto" (K
materialized for T lags, FFT convolution via long_conv), "recurrent" (token loop of ssm_conv_step).
State: h as [B, D, N, 2] (real, imaginary), constant in T. Work dtype float32 (float64 for float64
inputs); the phases l·ω are formed in float64 (float32 would lose radians at lags of 10⁴ and more).
Layout [B, T, D] (channel op).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validate import check_same_device_dtype, check_shape
from .chunk import ssm_conv_fft
from .naive import ssm_conv_naive
from .recurrent import ssm_conv_recurrent, ssm_conv_step_real

__all__ = ["ssm_conv", "ssm_conv_step", "ssm_kernel", "BACKENDS"]

BACKENDS = ("auto", "naive", "fft", "recurrent")


def ssm_kernel(log_rate: torch.Tensor, frequency: torch.Tensor, coeff: torch.Tensor, length: int,
               start: int = 0) -> torch.Tensor:
    """K_l = Re Σ_n C_n λ_n^l for l = start .. start+length−1: [D, length], in log_rate's dtype."""
    from .chunk import powers

    real, imag = powers(log_rate, frequency, length, start)  # [D, N, length]
    return torch.einsum("dnl,dn->dl", real, coeff[..., 0]) - torch.einsum("dnl,dn->dl", imag, coeff[..., 1])


def _check(x, log_rate, frequency, coeff, state, state_name, x_dims):
    sizes: dict = {}
    check_shape("x" if len(x_dims) == 3 else "x_t", x, x_dims, sizes)
    check_shape("log_rate", log_rate, ("D", "N"), sizes)
    check_shape("frequency", frequency, ("D", "N"), sizes)
    check_shape("coeff", coeff, ("D", "N", 2), sizes)
    check_same_device_dtype({"log_rate": log_rate, "frequency": frequency, "coeff": coeff})
    if state is not None:
        check_shape(state_name, state, ("B", "D", "N", 2), sizes)
        if state.device != x.device or not state.is_floating_point():
            raise ValueError(f"{state_name} must be a floating tensor on {x.device}, got {state.dtype} on {state.device}")
    if not x.is_floating_point() or x.device != log_rate.device:
        raise ValueError(f"x must be a floating tensor on {log_rate.device} (the parameters' device), got {x.dtype} on {x.device}")


def _work(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def ssm_conv(
    x: torch.Tensor, log_rate: torch.Tensor, frequency: torch.Tensor, coeff: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False, backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x [B, T, D] -> (y [B, T, D] in x's dtype, final h [B, D, N, 2] in the work dtype, or None).
    initial_state: h [B, D, N, 2] before x (prefill continuation)."""
    _check(x, log_rate, frequency, coeff, initial_state, "initial_state", ("B", "T", "D"))
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    work = _work(x.dtype)
    params = tuple(t.to(work) for t in (log_rate, frequency, coeff))
    h0 = None if initial_state is None else initial_state.to(work)
    if backend == "naive":
        y, h = ssm_conv_naive(x.to(work), *params, h0, output_final_state)
    elif backend == "recurrent":
        y, h = ssm_conv_recurrent(x.to(work), *params, h0)
    else:
        y, h = ssm_conv_fft(x.to(work), *params, h0, output_final_state)
    return y.to(x.dtype), (h if output_final_state else None)


def ssm_conv_step(
    x_t: torch.Tensor, log_rate: torch.Tensor, frequency: torch.Tensor, coeff: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: x_t [B, D], h [B, D, N, 2] (None = zeros) -> (y_t [B, D], new h). O(D·N)."""
    _check(x_t, log_rate, frequency, coeff, state, "state", ("B", "D"))
    work = _work(x_t.dtype)
    if state is None:
        state = x_t.new_zeros(x_t.shape[0], *coeff.shape, dtype=work)
    lam_re, lam_im = pole(log_rate.to(work), frequency.to(work))
    y, h = ssm_conv_step_real(x_t.to(work), lam_re, lam_im, coeff.to(work), state.to(work))
    return y.to(x_t.dtype), h


def pole(log_rate: torch.Tensor, frequency: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Re λ, Im λ) of λ = exp(−e^ρ + iω): [D, N] each."""
    magnitude = torch.exp(-torch.exp(log_rate))
    return magnitude * torch.cos(frequency), magnitude * torch.sin(frequency)
