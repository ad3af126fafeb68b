"""Titans memory as a 2-layer MLP (the paper's preferred deep memory, arXiv 2501.00663 §3.1): sequential and step only.

M(x) = SiLU(x W1) W2 per batch entry and head, W1 [Dk, Dh], W2 [Dh, Dv] (no biases, no residual;
SiLU is our choice, the paper leaves the MLP's activation open). The update is the rule of
naive.py applied to each weight (per-weight momentum, one η, θ, α per token and head), with
gradients at the mini-batch-start weights. The step computes ∇ℓ with torch.func (grad, vmapped
over batch and heads); there is no chunked form (an MLP's gradient is not linear in the weights),
so training runs the step in a token loop (cost O(T), slow; for small models and probes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from .naive import Params, memory_sequential


@dataclass
class MLPMemoryState:
    memory: Params  # (W1 [B, H, Dk, Dh], W2 [B, H, Dh, Dv]) after the last token
    momentum: Params  # surprise S for each weight, same shapes
    chunk_start_memory: Params  # weights at the start of the current mini-batch
    seen_in_chunk: int = 0  # tokens already in the current mini-batch

    @classmethod
    def from_weights(cls, weights: Params) -> "MLPMemoryState":
        """Start of a sequence: weights (W1, W2) (e.g. learned initial weights expanded over batch), zero momentum."""
        weights = tuple(weights)
        return cls(weights, tuple(torch.zeros_like(w) for w in weights), weights, 0)


def mlp_memory_fn(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Batched read: params (W1 [B, H, Dk, Dh], W2 [B, H, Dh, Dv]), x [B, H, Dk] -> [B, H, Dv]."""
    hidden = F.silu(torch.einsum("bhk,bhkd->bhd", x, params[0]))
    return torch.einsum("bhd,bhdv->bhv", hidden, params[1])


def _loss(w1: torch.Tensor, w2: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ℓ = ||SiLU(k W1) W2 - v||² for one batch entry and head."""
    return (F.silu(k @ w1) @ w2 - v).pow(2).sum()


_batched_grad = vmap(vmap(grad(_loss, argnums=(0, 1))))  # over batch, then heads


def mlp_memory_recurrent_step(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, theta_t: torch.Tensor, log_eta_t: torch.Tensor,
    log_retain_t: torch.Tensor, chunk_size: int, state: MLPMemoryState,
) -> Tuple[torch.Tensor, MLPMemoryState]:
    """q_t, k_t [B, H, Dk], v_t [B, H, Dv], gates [B, H] -> (y_t [B, H, Dv], new state)."""
    P, S = state.memory, state.momentum
    work = P[0].dtype
    P_start = P if state.seen_in_chunk == 0 else state.chunk_start_memory
    grads = _batched_grad(P_start[0], P_start[1], k_t.to(work), v_t.to(work))
    gate = lambda g: g.to(work)[..., None, None]  # noqa: E731
    S = tuple(torch.exp(gate(log_eta_t)) * s - gate(theta_t) * g for s, g in zip(S, grads))
    P = tuple(torch.exp(gate(log_retain_t)) * p + s for p, s in zip(P, S))
    y = mlp_memory_fn(P, q_t.to(work))
    pos = (state.seen_in_chunk + 1) % chunk_size
    return y.to(v_t.dtype), MLPMemoryState(P, S, P if pos == 0 else P_start, pos)


def mlp_memory_loop(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int, state: MLPMemoryState,
) -> Tuple[torch.Tensor, MLPMemoryState]:
    """The step in a token loop over q, k [B, T, H, Dk], v [B, T, H, Dv], gates [B, T, H]."""
    ys = []
    for t in range(q.shape[1]):
        y, state = mlp_memory_recurrent_step(q[:, t], k[:, t], v[:, t], theta[:, t], log_eta[:, t], log_retain[:, t], chunk_size, state)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else v.new_zeros(v.shape)
    return y, state


def mlp_memory_sequential(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int, state: MLPMemoryState,
) -> Tuple[torch.Tensor, MLPMemoryState]:
    """The autograd reference (naive.memory_sequential) for the MLP memory: the oracle for the step."""
    y, P, S, P_start, pos = memory_sequential(
        mlp_memory_fn, q, k, v, theta, log_eta, log_retain, chunk_size,
        state.memory, state.momentum, state.chunk_start_memory, state.seen_in_chunk,
    )
    return y, MLPMemoryState(P, S, P_start, pos)
