"""Chunked (mini-batch) form of the Titans matrix memory: masked matmuls inside each mini-batch, loop over chunks.

arXiv 2501.00663 §3.2 (Eqs. 16-18), matrix memory M(k) = k M. Inside one mini-batch (local index
r = 0..n-1, all gradients at the mini-batch-start weights M', previous weights M0, momentum S0):
    E = K M' - V                              (so u_s = 2 k_sᵀ e_s)
    DA[r, s] = Π_{s<i<=r} η_i,  DB[r, j] = Π_{j<i<=r} (1 - α_i)   (lower-triangular, 1 on the diagonal)
    a_r = Π_{i<=r} η_i,  c_r = Π_{i<=r} (1 - α_i)
    S_r = a_r S0 - 2 Σ_{s<=r} DA[r, s] θ_s k_sᵀ e_s
    M_r = c_r M0 + f_r S0 - 2 Σ_{s<=r} W[r, s] θ_s k_sᵀ e_s,   f = DB a,  W = DB DA
    y_r = q_r M_r = c_r q_r M0 + f_r q_r S0 - 2 Σ_s (q_r·k_s) W[r, s] θ_s e_s
Products over a range are exp of segment sums of the log gates (summed inside the range, never as a
difference of two cumulative sums), so every exponent is <= 0 and nothing cancels. Mini-batch
boundaries are at absolute positions multiple of b; a continued sequence may start mid-batch.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .state import NeuralMemoryState


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """x [..., n] -> [..., n, n] with out[r, s] = Σ_{s<i<=r} x_i for s <= r and -inf above the diagonal."""
    n = x.shape[-1]
    rows = x.unsqueeze(-1).expand(*x.shape, n)  # rows[i, s] = x_i
    strictly_lower = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)
    sums = rows.masked_fill(~strictly_lower, 0).cumsum(dim=-2)  # sums[r, s] = Σ_{s<i<=r} x_i
    return sums.masked_fill(~torch.ones_like(strictly_lower).tril(), float("-inf"))


def neural_memory_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int, state: NeuralMemoryState,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """q, k [B, T, H, Dk], v [B, T, H, Dv], gates [B, T, H] -> (y [B, T, H, Dv], state after T tokens)."""
    work = state.memory.dtype
    T = q.shape[1]
    # [B, H, T, *] in the work dtype
    qh, kh, vh = (t.transpose(1, 2).to(work) for t in (q, k, v))
    th, eta, ret = (t.transpose(1, 2).to(work) for t in (theta, log_eta, log_retain))
    M, S, M_start, pos = state.memory, state.momentum, state.chunk_start_memory, state.position
    ys = []
    start = 0
    while start < T:
        if pos == 0:
            M_start = M
        stop = min(T, start + chunk_size - pos)
        sl = slice(start, stop)
        Q, K, V, lr = qh[:, :, sl], kh[:, :, sl], vh[:, :, sl], th[:, :, sl]
        E = K @ M_start - V  # [B, H, n, Dv]
        DA = torch.exp(segment_sum(eta[:, :, sl]))  # [B, H, n, n]
        DB = torch.exp(segment_sum(ret[:, :, sl]))
        a = torch.exp(eta[:, :, sl].cumsum(-1))  # [B, H, n]
        c = torch.exp(ret[:, :, sl].cumsum(-1))
        f = (DB @ a.unsqueeze(-1)).squeeze(-1)
        W = DB @ DA
        scores = (Q @ K.transpose(-1, -2)) * W * lr.unsqueeze(-2)  # [B, H, n, n]: (q_r·k_s) W[r,s] θ_s
        ys.append(c.unsqueeze(-1) * (Q @ M) + f.unsqueeze(-1) * (Q @ S) - 2 * scores @ E)
        KS = K * (DA[..., -1, :] * lr).unsqueeze(-1)  # rows θ_s DA[n-1, s] k_s
        KM = K * (W[..., -1, :] * lr).unsqueeze(-1)  # rows θ_s W[n-1, s] k_s
        S_next = a[..., -1, None, None] * S - 2 * KS.transpose(-1, -2) @ E
        M = c[..., -1, None, None] * M + f[..., -1, None, None] * S - 2 * KM.transpose(-1, -2) @ E
        S = S_next
        pos = (pos + stop - start) % chunk_size
        start = stop
    y = torch.cat(ys, 2).transpose(1, 2) if ys else v.new_zeros(v.shape, dtype=work)
    return y.to(v.dtype), NeuralMemoryState(M, S, M if pos == 0 else M_start, pos)
