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


def _span_coefficients(Q, K, lr, log_eta, log_retain):
    """State-independent terms of mini-batches stacked as [B, H, nc, n, *] (gates [B, H, nc, n])."""
    DA = torch.exp(segment_sum(log_eta))  # [..., n, n]
    DB = torch.exp(segment_sum(log_retain))
    a = torch.exp(log_eta.cumsum(-1))  # [..., n]
    c = torch.exp(log_retain.cumsum(-1))
    f = (DB @ a.unsqueeze(-1)).squeeze(-1)
    W = DB @ DA
    scores = (Q @ K.transpose(-1, -2)) * W * lr.unsqueeze(-2)  # (q_r·k_s) W[r,s] θ_s
    KS = K * (DA[..., -1, :] * lr).unsqueeze(-1)  # rows θ_s DA[n-1, s] k_s
    KM = K * (W[..., -1, :] * lr).unsqueeze(-1)  # rows θ_s W[n-1, s] k_s
    last = lambda x: x[..., -1, None, None]  # noqa: E731
    return c.unsqueeze(-1), f.unsqueeze(-1), scores, KS.transpose(-1, -2), KM.transpose(-1, -2), last(a), last(c), last(f)


def neural_memory_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, log_eta: torch.Tensor,
    log_retain: torch.Tensor, chunk_size: int, state: NeuralMemoryState,
) -> Tuple[torch.Tensor, NeuralMemoryState]:
    """q, k [B, T, H, Dk], v [B, T, H, Dv], gates [B, T, H] -> (y [B, T, H, Dv], state after T tokens).

    The terms that do not depend on the memory are computed for all full mini-batches at once; the
    loop over mini-batches only does the matmuls with M', M and S."""
    work = state.memory.dtype
    T, b = q.shape[1], chunk_size
    per_token = [t.transpose(1, 2).to(work) for t in (q, k, v, theta, log_eta, log_retain)]  # [B, H, T, *]
    spans, start, pos = [], 0, state.seen_in_chunk
    while start < T:  # mini-batch pieces of the sequence; only the first and the last may be partial
        spans.append((start, min(T, start + b - pos)))
        start, pos = spans[-1][1], 0
    full = [sp for sp in spans if sp[1] - sp[0] == b]
    pieces, batched = [], {}  # per span: (Q, K, V, coefficients...)
    if full:
        lo, nf = full[0][0], len(full)
        grouped = [t[:, :, lo : lo + nf * b].unflatten(2, (nf, b)) for t in per_token]
        batch = (*grouped[:3], *_span_coefficients(grouped[0], grouped[1], *grouped[3:]))
        batched = {sp: tuple(x[:, :, i] for x in batch) for i, sp in enumerate(full)}
    for sp in spans:
        if sp in batched:
            pieces.append(batched[sp])
        else:
            one = [t[:, :, sp[0] : sp[1]] for t in per_token]
            pieces.append((*one[:3], *_span_coefficients(one[0], one[1], *one[3:])))
    M, S, M_start, pos = state.memory, state.momentum, state.chunk_start_memory, state.seen_in_chunk
    ys = []
    for (start, stop), (Q, K, V, c, f, scores, KSt, KMt, a_last, c_last, f_last) in zip(spans, pieces):
        if pos == 0:
            M_start = M
        E = K @ M_start - V  # [B, H, n, Dv]: u_s = 2 k_sᵀ e_s
        ys.append(c * (Q @ M) + f * (Q @ S) - 2 * scores @ E)
        M, S = c_last * M + f_last * S - 2 * KMt @ E, a_last * S - 2 * KSt @ E
        pos = (pos + stop - start) % b
    y = torch.cat(ys, 2).transpose(1, 2) if ys else v.new_zeros(v.shape, dtype=work)
    return y.to(v.dtype), NeuralMemoryState(M, S, M if pos == 0 else M_start, pos)
