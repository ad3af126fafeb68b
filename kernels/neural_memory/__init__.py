"""neural_memory: Titans long-term memory (Behrouz et al. 2024, arXiv 2501.00663 §3.1-3.2, Eqs. 11-18; DESIGN §5.8).

    y, state = neural_memory(q, k, v, theta, log_eta, log_retain, chunk_size=16,
                             initial_state=None, output_final_state=False, backend="auto")
q, k [B, T, H, Dk], v [B, T, H, Dv]; per token and head [B, T, H]: theta = θ_t >= 0 (learning
rate of the inner gradient step), log_eta = log η_t <= 0 (momentum decay), log_retain = log(1 - α_t)
<= 0 (forgetting gate). Matrix memory M [B, H, Dk, Dv] applied as M(k) = k M; inner loss
ℓ_t = ||k_t M - v_t||² with its exact gradient 2 k_tᵀ(k_t M - v_t) (the factor 2 is not folded
into θ); read y_t = q_t M_t with M_t the weights AFTER the update at t (Eq. 15), in every form.
Mini-batch semantics (Eqs. 16-18): every gradient of a mini-batch of b = chunk_size tokens (at
absolute positions multiple of b) is taken at the mini-batch-start weights; momentum and
forgetting stay per token. b = 1 is the token-by-token rule. b is part of the model.
Backends: "naive" (token loop, autograd gradients) | "torch" / "auto" (chunked matmuls).
neural_memory_step(...) is the decoding step; NeuralMemoryState holds (M, S, M_{t'}, position).
initial_state: a NeuralMemoryState, or a memory tensor M_0 [B, H, Dk, Dv] (zero momentum).
State dtype float32 (float64 for float64 inputs); y in v's dtype. No scale on q (the Titans
layer l2-normalizes q and k, §4.4).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .._validate import check_log_decay, check_positive_int, check_same_device_dtype, check_shape
from .chunk import neural_memory_chunk
from .naive import neural_memory_sequential
from .recurrent import neural_memory_recurrent_step
from .state import NeuralMemoryState

__all__ = ["neural_memory", "neural_memory_step", "NeuralMemoryState"]


def _check_gates(theta, log_eta, log_retain, dims, sizes, suffix=""):
    for name, g in (("theta", theta), ("log_eta", log_eta), ("log_retain", log_retain)):
        check_shape(name + suffix, g, dims, sizes)
    check_log_decay("log_eta" + suffix, log_eta)
    check_log_decay("log_retain" + suffix, log_retain)
    if torch.isnan(theta).any() or bool((theta < 0).any()):
        raise ValueError(f"theta{suffix} must be >= 0 and not NaN (a learning rate, e.g. sigmoid(...)); min is {theta.min().item():.3g}")


def _resolve_state(initial_state, sizes, dtype, device, chunk_size, name="initial_state") -> NeuralMemoryState:
    B, H, Dk, Dv = sizes["B"], sizes["H"], sizes["Dk"], sizes["Dv"]
    if initial_state is None:
        return NeuralMemoryState.zeros(B, H, Dk, Dv, dtype=dtype, device=device)
    if isinstance(initial_state, torch.Tensor):
        check_shape(name, initial_state, ("B", "H", "Dk", "Dv"), sizes)
        initial_state = NeuralMemoryState.from_memory(initial_state)
    if not isinstance(initial_state, NeuralMemoryState):
        raise ValueError(f"{name} must be a NeuralMemoryState or a memory tensor [B, H, Dk, Dv], got {type(initial_state).__name__}")
    for field in ("memory", "momentum", "chunk_start_memory"):
        t = getattr(initial_state, field)
        check_shape(f"{name}.{field}", t, ("B", "H", "Dk", "Dv"), sizes)
        if t.device != device or not t.is_floating_point():
            raise ValueError(f"{name}.{field} must be a floating tensor on {device}, got {t.dtype} on {t.device}")
    p = initial_state.position
    if not isinstance(p, int) or not 0 <= p < chunk_size:
        raise ValueError(f"{name}.position must be an integer in [0, chunk_size={chunk_size}), got {p!r}")
    cast = lambda t: t.to(dtype)  # noqa: E731
    return NeuralMemoryState(cast(initial_state.memory), cast(initial_state.momentum), cast(initial_state.chunk_start_memory), p)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def neural_memory(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int = 16,
    initial_state: Optional[Union[NeuralMemoryState, torch.Tensor]] = None,
    output_final_state: bool = False, backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[NeuralMemoryState]]:
    """Titans memory over a sequence; see the module docstring. Returns (y [B, T, H, Dv], state or None)."""
    sizes: dict = {}
    check_shape("q", q, ("B", "T", "H", "Dk"), sizes)
    check_shape("k", k, ("B", "T", "H", "Dk"), sizes)
    check_shape("v", v, ("B", "T", "H", "Dv"), sizes)
    _check_gates(theta, log_eta, log_retain, ("B", "T", "H"), sizes)
    check_same_device_dtype({"q": q, "k": k, "v": v, "theta": theta, "log_eta": log_eta, "log_retain": log_retain})
    check_positive_int("chunk_size", chunk_size)
    state = _resolve_state(initial_state, sizes, _work_dtype(q), q.device, chunk_size)
    if backend == "naive":
        y, final = neural_memory_sequential(q, k, v, theta, log_eta, log_retain, chunk_size, state)
    elif backend in ("torch", "auto"):
        y, final = neural_memory_chunk(q, k, v, theta, log_eta, log_retain, chunk_size, state)
    else:
        raise ValueError(f"backend must be 'naive', 'torch' or 'auto', got {backend!r}")
    return y, (final if output_final_state else None)


def neural_memory_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, theta_t: torch.Tensor, log_eta_t: torch.Tensor,
    log_retain_t: torch.Tensor, state: Optional[Union[NeuralMemoryState, torch.Tensor]] = None, chunk_size: int = 16,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """One decoding step: q_t, k_t [B, H, Dk], v_t [B, H, Dv], gates [B, H] -> (y_t [B, H, Dv], new state)."""
    sizes: dict = {}
    check_shape("q_t", q_t, ("B", "H", "Dk"), sizes)
    check_shape("k_t", k_t, ("B", "H", "Dk"), sizes)
    check_shape("v_t", v_t, ("B", "H", "Dv"), sizes)
    _check_gates(theta_t, log_eta_t, log_retain_t, ("B", "H"), sizes, "_t")
    check_same_device_dtype({"q_t": q_t, "k_t": k_t, "v_t": v_t, "theta_t": theta_t, "log_eta_t": log_eta_t, "log_retain_t": log_retain_t})
    check_positive_int("chunk_size", chunk_size)
    state = _resolve_state(state, sizes, _work_dtype(q_t), q_t.device, chunk_size, "state")
    return neural_memory_recurrent_step(q_t, k_t, v_t, theta_t, log_eta_t, log_retain_t, chunk_size, state)
