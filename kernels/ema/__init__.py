"""ema: Mega's damped multi-dimensional EMA (Ma et al. 2022, arXiv 2209.10655 §3.1, App. A).

    y, h = ema(x, p, log_q, beta, gamma, initial_state=None, output_final_state=False,
               chunk_size=64, backend="auto")
x [B, T, D] (channel op; parameters may be float32 with bf16 x), p = σ(δ) [D, N], log_q = log1p(-p·σ(α)) [D, N] (<= 0, computed by the
layer in float32+), beta [D, N], gamma [D, N]; h [B, D, N].
    h_t = p β x_t + q h_{t-1};  y_t = N^{-1/2} Σ_n γ_n h_{t,n}   (Mega's readout scale, inside the op)
The layer adds ω⊙x and the SiLU. Backends: "naive" (token loop) | "fft" (kernel + FFT, Mega's
training form; "auto") | "chunk" (chunked with state). ema_step is the decoding step.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._dtype import compute_dtype
from .._validate import check_int, check_log_decay, check_same_device_dtype, check_shape
from .chunk import ema_chunk
from .fft import ema_fft
from .naive import ema_naive
from .recurrent import ema_recurrent_step

__all__ = ["ema", "ema_step"]


def _check_params(p, log_q, beta, gamma, sizes, x_name, x):
    """Shapes [D, N]; one dtype/device for the parameters, which may be more precise than x (float32
    parameters with bf16 activations); math runs in float32 (float64 for float64 x)."""
    for name, t in (("p", p), ("log_q", log_q), ("beta", beta), ("gamma", gamma)):
        check_shape(name, t, ("D", "N"), sizes)
    check_same_device_dtype({"p": p, "log_q": log_q, "beta": beta, "gamma": gamma})
    if not x.is_floating_point() or x.device != p.device:
        raise ValueError(f"{x_name} must be a floating tensor on {p.device} (the parameters' device), got {x.dtype} on {x.device}")
    check_log_decay("log_q", log_q)
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError(f"p has values outside [0, 1] (min {p.min().item():.3g}, max {p.max().item():.3g}); pass p = sigmoid(delta)")


def _check_state(name, state, x):
    """The EMA state may be float32 for low-precision x (it accumulates), but must be a float tensor on x's device."""
    if state is not None and (state.device != x.device or not state.is_floating_point()):
        raise ValueError(f"{name} must be a floating tensor on {x.device}, got dtype {state.dtype} on {state.device}")


def ema(
    x: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
    chunk_size: int = 64, backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Damped EMA over x [B, T, D]; returns (y [B, T, D] in x's dtype, final h [B, D, N] or None).

    initial_state: [B, D, N] hidden state before x (prefill continuation). State in float32
    (float64 for float64 inputs)."""
    sizes: dict = {}
    check_shape("x", x, ("B", "T", "D"), sizes)
    _check_params(p, log_q, beta, gamma, sizes, "x", x)
    if initial_state is not None:
        check_shape("initial_state", initial_state, ("B", "D", "N"), sizes)
    check_int("chunk_size", chunk_size)
    _check_state("initial_state", initial_state, x)
    if backend == "naive":
        work = compute_dtype(x.dtype)
        h0 = None if initial_state is None else initial_state.to(work)
        y, h = ema_naive(x, p.to(work), log_q.to(work), beta.to(work), gamma.to(work), h0)
        return y, (h if output_final_state else None)
    if backend == "chunk":
        y, h = ema_chunk(x, p, log_q, beta, gamma, initial_state, chunk_size)
        return y, (h if output_final_state else None)
    if backend not in ("fft", "auto"):
        raise ValueError(f"backend must be 'naive', 'fft', 'chunk' or 'auto', got {backend!r}")
    return ema_fft(x, p, log_q, beta, gamma, initial_state, output_final_state)


def ema_step(
    x_t: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
    state: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: x_t [B, D], state h [B, D, N] (None = zeros) -> (y_t [B, D], new h)."""
    sizes: dict = {}
    check_shape("x_t", x_t, ("B", "D"), sizes)
    _check_params(p, log_q, beta, gamma, sizes, "x_t", x_t)
    work = compute_dtype(x_t.dtype)
    if state is None:
        state = x_t.new_zeros(x_t.shape[0], x_t.shape[1], p.shape[1], dtype=work)
    check_shape("state", state, ("B", "D", "N"), sizes)
    _check_state("state", state, x_t)
    return ema_recurrent_step(x_t, p.to(work), log_q.to(work), beta.to(work), gamma.to(work), state.to(work))
