"""neural_memory: Titans long-term memory (Behrouz et al. 2024, arXiv 2501.00663 §3.1-3.2, Eqs. 11-18).

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
neural_memory_step(...) is the decoding step; NeuralMemoryState holds (M, S, M_{t'}, seen_in_chunk).
mlp_memory / mlp_memory_step: the same rule with a 2-layer MLP memory SiLU(k W1) W2 (mlp.py): token
loop only (torch.func gradients; backend "naive" = autograd reference), initial weights required.
initial_state: a NeuralMemoryState, or a memory tensor M_0 [B, H, Dk, Dv] (zero momentum).
State dtype float32 (float64 for float64 inputs); y in v's dtype. No scale on q (the Titans
layer l2-normalizes q and k, §4.4).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .._dtype import compute_dtype
from .._validate import check_int, check_log_decay, check_same_device_dtype, check_shape
from .chunk import neural_memory_chunk
from .mlp import MLPMemoryState, mlp_memory_loop, mlp_memory_recurrent_step, mlp_memory_sequential
from .naive import neural_memory_sequential
from .recurrent import neural_memory_recurrent_step
from .state import NeuralMemoryState

__all__ = ["neural_memory", "neural_memory_step", "NeuralMemoryState", "mlp_memory", "mlp_memory_step", "MLPMemoryState"]


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
    p = initial_state.seen_in_chunk
    check_int(f"{name}.seen_in_chunk (tokens of the current mini-batch of chunk_size={chunk_size})", p, 0, chunk_size - 1)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return NeuralMemoryState(cast(initial_state.memory), cast(initial_state.momentum), cast(initial_state.chunk_start_memory), p)


def neural_memory(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int = 16,
    initial_state: Optional[Union[NeuralMemoryState, torch.Tensor]] = None,
    output_final_state: bool = False, backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[NeuralMemoryState]]:
    """Titans memory over a sequence; see the module docstring. Returns (y [B, T, H, Dv], state or None)."""
    sizes: dict = {}
    _check_seq(q, k, v, theta, log_eta, log_retain, chunk_size, sizes)
    state = _resolve_state(initial_state, sizes, compute_dtype(q.dtype), q.device, chunk_size)
    forms = {"naive": neural_memory_sequential, "torch": neural_memory_chunk}
    return _run(forms, backend, (q, k, v, theta, log_eta, log_retain, chunk_size, state), output_final_state)


def _run(forms: dict, backend: str, args: tuple, output_final_state: bool):
    """Dispatch to forms["naive"] or forms["torch"] ("auto" = "torch"); drop the state unless asked for."""
    form = forms.get("torch" if backend == "auto" else backend)
    if form is None:
        raise ValueError(f"backend must be 'naive', 'torch' or 'auto', got {backend!r}")
    y, final = form(*args)
    return y, (final if output_final_state else None)


def neural_memory_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, theta_t: torch.Tensor, log_eta_t: torch.Tensor,
    log_retain_t: torch.Tensor, state: Optional[Union[NeuralMemoryState, torch.Tensor]] = None, chunk_size: int = 16,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """One decoding step: q_t, k_t [B, H, Dk], v_t [B, H, Dv], gates [B, H] -> (y_t [B, H, Dv], new state)."""
    sizes: dict = {}
    _check_step(q_t, k_t, v_t, theta_t, log_eta_t, log_retain_t, chunk_size, sizes)
    state = _resolve_state(state, sizes, compute_dtype(q_t.dtype), q_t.device, chunk_size, "state")
    return neural_memory_recurrent_step(q_t, k_t, v_t, theta_t, log_eta_t, log_retain_t, chunk_size, state)


def _check_seq(q, k, v, theta, log_eta, log_retain, chunk_size, sizes):
    check_shape("q", q, ("B", "T", "H", "Dk"), sizes)
    check_shape("k", k, ("B", "T", "H", "Dk"), sizes)
    check_shape("v", v, ("B", "T", "H", "Dv"), sizes)
    _check_gates(theta, log_eta, log_retain, ("B", "T", "H"), sizes)
    check_same_device_dtype({"q": q, "k": k, "v": v, "theta": theta, "log_eta": log_eta, "log_retain": log_retain})
    check_int("chunk_size", chunk_size)


def _resolve_mlp_state(state, sizes, dtype, device, chunk_size, name) -> MLPMemoryState:
    if isinstance(state, (tuple, list)):
        state = MLPMemoryState.from_weights(state)
    if not isinstance(state, MLPMemoryState):
        raise ValueError(f"{name} must be an MLPMemoryState or the weights (W1 [B, H, Dk, Dh], W2 [B, H, Dh, Dv]), got {type(state).__name__}")
    for field in ("memory", "momentum", "chunk_start_memory"):
        weights = getattr(state, field)
        if len(weights) != 2:
            raise ValueError(f"{name}.{field} must hold 2 weights (W1, W2), got {len(weights)}")
        check_shape(f"{name}.{field}[0]", weights[0], ("B", "H", "Dk", "Dh"), sizes)
        check_shape(f"{name}.{field}[1]", weights[1], ("B", "H", "Dh", "Dv"), sizes)
        for i, w in enumerate(weights):
            if w.device != device or not w.is_floating_point():
                raise ValueError(f"{name}.{field}[{i}] must be a floating tensor on {device}, got {w.dtype} on {w.device}")
    check_int(f"{name}.seen_in_chunk (tokens of the current mini-batch of chunk_size={chunk_size})", state.seen_in_chunk, 0, chunk_size - 1)
    cast = lambda ws: tuple(w.to(dtype) for w in ws)  # noqa: E731
    return MLPMemoryState(cast(state.memory), cast(state.momentum), cast(state.chunk_start_memory), state.seen_in_chunk)


def mlp_memory(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, initial_state: Union[MLPMemoryState, Tuple[torch.Tensor, torch.Tensor]],
    chunk_size: int = 16, output_final_state: bool = False, backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[MLPMemoryState]]:
    """Titans memory with a 2-layer MLP, token loop. initial_state: MLPMemoryState or (W1 [B, H, Dk, Dh],
    W2 [B, H, Dh, Dv]). backend: "naive" (autograd gradients) | "torch" / "auto" (torch.func step)."""
    sizes: dict = {}
    _check_seq(q, k, v, theta, log_eta, log_retain, chunk_size, sizes)
    state = _resolve_mlp_state(initial_state, sizes, compute_dtype(q.dtype), q.device, chunk_size, "initial_state")
    forms = {"naive": mlp_memory_sequential, "torch": mlp_memory_loop}
    return _run(forms, backend, (q, k, v, theta, log_eta, log_retain, chunk_size, state), output_final_state)


def mlp_memory_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, theta_t: torch.Tensor, log_eta_t: torch.Tensor,
    log_retain_t: torch.Tensor, state: Union[MLPMemoryState, Tuple[torch.Tensor, torch.Tensor]], chunk_size: int = 16,
) -> Tuple[torch.Tensor, MLPMemoryState]:
    """One decoding step of the MLP memory: q_t, k_t [B, H, Dk], v_t [B, H, Dv], gates [B, H]."""
    sizes: dict = {}
    _check_step(q_t, k_t, v_t, theta_t, log_eta_t, log_retain_t, chunk_size, sizes)
    state = _resolve_mlp_state(state, sizes, compute_dtype(q_t.dtype), q_t.device, chunk_size, "state")
    return mlp_memory_recurrent_step(q_t, k_t, v_t, theta_t, log_eta_t, log_retain_t, chunk_size, state)


def _check_step(q_t, k_t, v_t, theta_t, log_eta_t, log_retain_t, chunk_size, sizes):
    check_shape("q_t", q_t, ("B", "H", "Dk"), sizes)
    check_shape("k_t", k_t, ("B", "H", "Dk"), sizes)
    check_shape("v_t", v_t, ("B", "H", "Dv"), sizes)
    _check_gates(theta_t, log_eta_t, log_retain_t, ("B", "H"), sizes, "_t")
    check_same_device_dtype({"q_t": q_t, "k_t": k_t, "v_t": v_t, "theta_t": theta_t, "log_eta_t": log_eta_t, "log_retain_t": log_retain_t})
    check_int("chunk_size", chunk_size)
