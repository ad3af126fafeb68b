"""Titans neural memory, sequential reference: a token loop whose gradients come from autograd (the definition).

Titans, Behrouz et al. 2024, arXiv 2501.00663 §3.1-3.2; memory M with parameters P (a matrix,
M(k) = k M, or the weights of an MLP) and mini-batch size b (docs/architecture.md §5.8):
    t' = first token of t's mini-batch (mini-batches at absolute positions 0, b, 2b, ...)
    u_t = ∇_P ℓ(P_{t'-1}; k_t, v_t),  ℓ = ||M(k_t) - v_t||²          (Eqs. 12, 16-17)
    S_t = η_t S_{t-1} - θ_t u_t                                       (Eq. 14 / 18), per parameter
    P_t = (1 - α_t) P_{t-1} + S_t                                     (Eq. 13)
    y_t = M_{P_t}(q_t)   (read after the update at t, no weight change) (Eq. 15)
With b = 1, P_{t'-1} = P_{t-1}: the paper's token-by-token rule. The gradient is taken with
torch.autograd (create_graph, so outer gradients flow), independent of the closed forms used by
chunk.py / recurrent.py and of mlp.py's torch.func. Layout [B, T, H, D]; gates [B, T, H].
Test oracle only (slow).
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

from .state import NeuralMemoryState

Params = Tuple[torch.Tensor, ...]  # each [B, H, ...]
MemoryFn = Callable[[Params, torch.Tensor], torch.Tensor]  # (params, x [B, H, Dk]) -> [B, H, Dv]


def linear_memory(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Matrix memory M(x) = x M, params = (M [B, H, Dk, Dv],)."""
    return torch.einsum("bhk,bhkv->bhv", x, params[0])


def memory_sequential(
    memory_fn: MemoryFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
    log_eta: torch.Tensor, log_retain: torch.Tensor, chunk_size: int,
    params: Params, momentum: Params, start_params: Params, seen_in_chunk: int,
) -> Tuple[torch.Tensor, Params, Params, Params, int]:
    """Token loop for any memory_fn; returns (y [B, T, H, Dv], params, momentum, start params, seen_in_chunk)."""
    P, S, P_start, pos = params, momentum, start_params, seen_in_chunk
    work = P[0].dtype
    ys = []
    for t in range(q.shape[1]):
        if pos == 0:
            P_start = P
        with torch.enable_grad():
            W = tuple(p if p.requires_grad else p.detach().requires_grad_() for p in P_start)
            err = memory_fn(W, k[:, t].to(work)) - v[:, t].to(work)
            grads = torch.autograd.grad(err.pow(2).sum(), W, create_graph=True)  # per-(b, h) losses are separate
        gate = lambda g, p: g[:, t].to(work).view(*g.shape[:1], g.shape[2], *([1] * (p.dim() - 2)))  # noqa: E731
        S = tuple(torch.exp(gate(log_eta, s)) * s - gate(theta, s) * g for s, g in zip(S, grads))
        P = tuple(torch.exp(gate(log_retain, p)) * p + s for p, s in zip(P, S))
        ys.append(memory_fn(P, q[:, t].to(work)))
        pos = (pos + 1) % chunk_size
    y = torch.stack(ys, 1) if ys else v.new_zeros(v.shape, dtype=work)
    return y.to(v.dtype), P, S, (P if pos == 0 else P_start), pos


def neural_memory_sequential(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int, state: NeuralMemoryState,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """Matrix memory: q, k [B, T, H, Dk], v [B, T, H, Dv], theta / log_eta / log_retain = log(1 - α) [B, T, H]."""
    y, P, S, P_start, pos = memory_sequential(
        linear_memory, q, k, v, theta, log_eta, log_retain, chunk_size,
        (state.memory,), (state.momentum,), (state.chunk_start_memory,), state.seen_in_chunk,
    )
    return y, NeuralMemoryState(P[0], S[0], P_start[0], pos)
