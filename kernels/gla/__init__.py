"""`gla`: gated linear attention, the op most families are built on (docs/architecture.md §3.1-3.3).

    S_t = diag(e^{gk_t}) S_{t-1} diag(e^{gv_t}) + k_t v_tᵀ ,    o_t = scale · S_tᵀ q_t

GLA (Yang et al. 2023, arXiv 2312.06635, Eqs. 2-5) with an optional value-side decay (ReLiT,
arXiv 2310.15719). Backends: "naive" (masked T×T form, naive.py), "torch" (chunked, chunk.py),
"triton" (triton_chunk.py), "fla" (fla's kernels, CUDA only), "auto" (triton on CUDA, torch on CPU).
Inputs the Triton kernel cannot serve (value-side decay, a chunk size that is not a power of 2
>= 16, CPU tensors outside TRITON_INTERPRET=1, no Triton) fall back to "torch" with one log
warning per reason.
A normalizer (linear attention's denominator) is the last output column when a ones column is
appended to v (docs/architecture.md §3.2).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from .._validate import check_int, check_log_decay, check_same_device_dtype, check_shape
from .chunk import gla_chunk
from .gates import finite_log_decay
from .naive import gla_naive
from .recurrent import gla_recurrent, gla_step

__all__ = ["gla", "gla_step", "gla_chunk", "gla_naive", "gla_recurrent", "BACKENDS"]

BACKENDS = ("auto", "naive", "torch", "triton", "fla")
_log = logging.getLogger(__name__)
_fallbacks_reported: set = set()


def _fall_back(reason: str) -> str:
    """Say once per reason (in the log) that "torch" serves a call another backend cannot."""
    if reason not in _fallbacks_reported:
        _fallbacks_reported.add(reason)
        _log.warning("gla: %s; using the chunked PyTorch backend instead", reason)
    return "torch"


def _check_inputs(q, k, v, log_decay_k, log_decay_v, scale, initial_state, chunk_size, backend) -> None:
    sizes: dict = {}
    check_shape("q", q, ("B", "T", "H", "Dk"), sizes)
    check_shape("k", k, ("B", "T", "H", "Dk"), sizes)
    check_shape("v", v, ("B", "T", "H", "Dv"), sizes)
    if log_decay_k is not None:
        if not isinstance(log_decay_k, torch.Tensor) or log_decay_k.dim() not in (3, 4):
            shape = tuple(log_decay_k.shape) if isinstance(log_decay_k, torch.Tensor) else type(log_decay_k).__name__
            raise ValueError(f"log_decay_k has shape {shape}; expected [B, T, H] (one decay per head) or [B, T, H, Dk]")
        check_shape("log_decay_k", log_decay_k, ("B", "T", "H", "Dk")[: log_decay_k.dim()], sizes)
    if log_decay_v is not None:
        check_shape("log_decay_v", log_decay_v, ("B", "T", "H", "Dv"), sizes)
    if initial_state is not None:
        check_shape("initial_state", initial_state, ("B", "H", "Dk", "Dv"), sizes)
    check_same_device_dtype({"q": q, "k": k, "v": v, "log_decay_k": log_decay_k, "log_decay_v": log_decay_v})
    if initial_state is not None:  # float32/float64 state with e.g. bf16 inputs is fine; device must match
        check_same_device_dtype({"initial_state": initial_state})
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}")
    if q.shape[1] < 1:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected at least one time step (T >= 1)")
    check_log_decay("log_decay_k", log_decay_k)
    check_log_decay("log_decay_v", log_decay_v)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"scale must be a float or None (default Dk ** -0.5), got {scale!r}")
    check_int("chunk_size", chunk_size)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _gla_fla(q, k, v, log_decay_k, log_decay_v, scale, initial_state, output_final_state, reverse):
    """fla's chunk kernels (CUDA only); reverse by flipping time, as fla's recurrent kernels do."""
    if not q.is_cuda:
        raise ValueError(f"backend='fla' needs CUDA tensors (fla's kernels are Triton), got q on {q.device}")
    if log_decay_v is not None:
        raise ValueError("backend='fla' has no value-side decay; log_decay_v needs backend 'torch' or 'naive'")
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as err:
        raise ValueError(f"backend='fla' needs flash-linear-attention installed ({err})") from err
    flip = (lambda x: None if x is None else x.flip(1)) if reverse else (lambda x: x)
    state = None if initial_state is None else initial_state.float()
    if log_decay_k is not None and log_decay_k.dim() == 4:
        o, final = chunk_gla(flip(q), flip(k), flip(v), flip(log_decay_k), scale=scale,
                             initial_state=state, output_final_state=output_final_state)
    else:
        o, final = chunk_simple_gla(flip(q), flip(k), flip(v), g=flip(log_decay_k), scale=scale,
                                    initial_state=state, output_final_state=output_final_state)
    return flip(o), final


def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay_k: Optional[torch.Tensor] = None,
    log_decay_v: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    reverse: bool = False,
    chunk_size: int = 64,
    backend: str = "auto",
):
    """Gated linear attention.

    q, k [B, T, H, Dk]; v [B, T, H, Dv]; log_decay_k None | [B, T, H] (one per head, broadcast) |
    [B, T, H, Dk]; log_decay_v None | [B, T, H, Dv]; gates are natural logs <= 0 (-inf, a gate of
    exactly 0, included: kernels/gla/gates.py).
    scale: default Dk ** -0.5. initial_state [B, H, Dk, Dv]. reverse: scan from the last token
    (o_t depends on tokens s >= t). Returns (o [B, T, H, Dv] in q's dtype, final state
    [B, H, Dk, Dv] in float32/float64, or None unless output_final_state).
    """
    _check_inputs(q, k, v, log_decay_k, log_decay_v, scale, initial_state, chunk_size, backend)
    log_decay_k, log_decay_v = finite_log_decay(log_decay_k), finite_log_decay(log_decay_v)  # gate 0 is valid
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        backend = "triton" if q.is_cuda else "torch"
    args = (q, k, v, log_decay_k, log_decay_v, scale, initial_state, output_final_state, reverse)
    if backend == "triton":
        if log_decay_v is not None:
            backend = _fall_back("the Triton kernel has no value-side decay (log_decay_v)")
        else:
            try:
                from .triton_chunk import gla_triton, unsupported_reason
            except ImportError as err:
                backend = _fall_back(f"the Triton kernel is unavailable ({err})")
            else:
                reason = unsupported_reason(q, chunk_size)
                if reason is not None:
                    backend = _fall_back(reason)
                else:
                    return gla_triton(q, k, v, log_decay_k, scale, initial_state, output_final_state, reverse, chunk_size)
    if backend == "naive":
        return gla_naive(*args)
    if backend == "fla":
        return _gla_fla(*args)
    return gla_chunk(*args, chunk_size=chunk_size)
