"""One-token step of the Titans neural memory (decoding), closed-form gradient.

Same rule as naive.py (arXiv 2501.00663 Eqs. 13-18, matrix memory M(k) = k M): with
u_t = 2 k_tᵀ (k_t M_{t'} - v_t) at the mini-batch-start weights M_{t'} (refreshed from M every b
tokens), S_t = η_t S_{t-1} - θ_t u_t, M_t = (1 - α_t) M_{t-1} + S_t, y_t = q_t M_t. Keeping
(M, S, M_{t'}, seen_in_chunk) makes the step equal the chunked form for any split of the sequence.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .state import NeuralMemoryState


def neural_memory_recurrent_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, theta_t: torch.Tensor, log_eta_t: torch.Tensor,
    log_retain_t: torch.Tensor, chunk_size: int, state: NeuralMemoryState,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """q_t, k_t [B, H, Dk], v_t [B, H, Dv], gates [B, H] -> (y_t [B, H, Dv], new state)."""
    M, S = state.memory, state.momentum
    M_start = M if state.seen_in_chunk == 0 else state.chunk_start_memory
    k = k_t.to(M.dtype)
    err = torch.einsum("bhk,bhkv->bhv", k, M_start) - v_t.to(M.dtype)
    grad = 2 * k.unsqueeze(-1) * err.unsqueeze(-2)  # ∇_M ||k M - v||² = 2 kᵀ (k M - v)
    S = torch.exp(log_eta_t.to(M.dtype))[..., None, None] * S - theta_t.to(M.dtype)[..., None, None] * grad
    M = torch.exp(log_retain_t.to(M.dtype))[..., None, None] * M + S
    y = torch.einsum("bhk,bhkv->bhv", q_t.to(M.dtype), M)
    pos = (state.seen_in_chunk + 1) % chunk_size
    return y.to(v_t.dtype), NeuralMemoryState(M, S, M if pos == 0 else M_start, pos)
