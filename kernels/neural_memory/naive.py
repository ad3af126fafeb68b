"""Titans neural memory, sequential reference: a token loop whose gradients come from autograd (the definition).

Titans, Behrouz et al. 2024, arXiv 2501.00663 §3.1-3.2 with matrix memory M(k) = k M
(k a row vector [Dk], M [Dk, Dv]); mini-batch size b (DESIGN §5.8):
    t' = first token of t's mini-batch (mini-batches at absolute positions 0, b, 2b, ...)
    u_t = ∇_M ℓ(M_{t'-1}; k_t, v_t),  ℓ = ||k_t M - v_t||²          (Eqs. 12, 16-17)
    S_t = η_t S_{t-1} - θ_t u_t                                       (Eq. 14 / 18)
    M_t = (1 - α_t) M_{t-1} + S_t                                     (Eq. 13)
    y_t = q_t M_t   (read after the update at t, no weight change)    (Eq. 15)
With b = 1, M_{t'-1} = M_{t-1}: the paper's token-by-token rule. The gradient is taken with
torch.autograd (create_graph, so outer gradients flow), independent of the closed form 2 kᵀ(kM - v)
used by chunk.py and recurrent.py. Layout [B, T, H, D]; gates [B, T, H]. Test oracle only (slow).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .state import NeuralMemoryState


def neural_memory_sequential(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int, state: NeuralMemoryState,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """q, k [B, T, H, Dk], v [B, T, H, Dv], theta / log_eta / log_retain = log(1 - α) [B, T, H] -> (y [B, T, H, Dv], state)."""
    M, S, M_start, pos = state.memory, state.momentum, state.chunk_start_memory, state.position
    ys = []
    for t in range(q.shape[1]):
        if pos == 0:
            M_start = M
        with torch.enable_grad():
            W = M_start if M_start.requires_grad else M_start.detach().requires_grad_()
            err = torch.einsum("bhk,bhkv->bhv", k[:, t].to(W.dtype), W) - v[:, t].to(W.dtype)
            (grad,) = torch.autograd.grad(err.pow(2).sum(), W, create_graph=True)  # per-(b, h) losses are separate
        gate = lambda g: g[:, t].to(M.dtype)[..., None, None]  # noqa: E731  [B, H, 1, 1]
        S = torch.exp(gate(log_eta)) * S - gate(theta) * grad
        M = torch.exp(gate(log_retain)) * M + S
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(M.dtype), M))
        pos = (pos + 1) % chunk_size
    y = torch.stack(ys, 1) if ys else v.new_zeros(v.shape, dtype=M.dtype)
    return y.to(v.dtype), NeuralMemoryState(M, S, M if pos == 0 else M_start, pos)
