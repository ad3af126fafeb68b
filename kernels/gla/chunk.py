"""Gated linear attention, chunked PyTorch form (default on CPU; autograd gives the backward).

Same op as naive.py (docs/architecture.md §3.1). Chunked as in GLA (Yang et al. 2023, arXiv 2312.06635,
§4.2-4.3: chunkwise form, Eqs. 4-5, and secondary chunking, Fig. 3), numerics as in docs/architecture.md §3.3.
Inside a chunk of C tokens, b_r is the running log-decay from the chunk start to r (inclusive),
Γ = b at the last position, S the state at the chunk start:

    inter-chunk   o_r += (q_r ⊙ e^{bk_r})ᵀ S ⊙ e^{bv_r}
    intra-chunk   o_r += Σ_{s≤r} A_rs · (v_s ⊙ e^{bv_r - bv_s}),  A_rs = Σ_i q_ri k_si e^{bk_ri - bk_si}
    state         S  <- e^{Γk} ⊙ S ⊙ e^{Γv} + (K ⊙ e^{Γk - bk})ᵀ (V ⊙ e^{Γv - bv})

Every exponent is ≤ 0: e^{b_r - b_s} is never split as e^{b_r}·e^{-b_s}. A per-channel decay is
split at sub-chunk boundaries instead (sub-chunks of L tokens): for a query sub-chunk starting
after position p and an earlier key position s ≤ p, e^{b_r - b_s} = e^{b_r - b_p} · e^{b_p - b_s};
the L×L diagonal blocks are factorized through the sub-chunk start p as well,
(q_r e^{b_r - b_p}) · (k_s e^{b_p - b_s}), where the second exponent is positive but bounded by the
sub-chunk's own decay span b_p - b_{p+L}; sub-chunks whose span exceeds MAX_DIAGONAL_SPAN in some
channel (strong gates) are recomputed entry by entry with e^{b_r - b_s} (≤ 0), so no factor ever
exceeds e^{MAX_DIAGONAL_SPAN} and nothing overflows; each term keeps its float32 relative
precision either way (a product of two exactly-rounded factors). A scalar (per-head) decay needs no split:
its C×C decay matrix is formed from differences directly. Everything intra-chunk is computed for
all chunks at once; only the state pass loops over chunks. Nothing T×T is ever built.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._dtype import compute_dtype

NEG_INF = float("-inf")
# largest decay span (in log space) inside one sub-chunk for which the diagonal blocks are factorized
# through the sub-chunk start (a bounded positive exponent, ≤ e^20 ≈ 5e8 in float32); larger spans
# take the entry-by-entry form. GLA's gates (logsigmoid/16) stay far below it over 16 tokens.
MAX_DIAGONAL_SPAN = 20.0


def _masked_exp(diff: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """e^{diff} where keep, else 0 (masked before exp, so a positive masked exponent never overflows).

    `diff` must be a fresh temporary: it is overwritten (saves two full-size copies).
    """
    return diff.masked_fill_(~keep, NEG_INF).exp_()


def _sub_chunk(chunk_size: int, sub_chunk_size: int) -> int:
    """Largest divisor of chunk_size that is <= sub_chunk_size."""
    size = max(1, min(sub_chunk_size, chunk_size))
    while chunk_size % size:
        size -= 1
    return size


def _block_starts(cum: torch.Tensor, n_sub: int) -> torch.Tensor:
    """cum [..., C, D] -> [..., M, D]: running log-decay just before each sub-chunk (0 for the first)."""
    blocks = cum.unflatten(-2, (n_sub, -1))
    return F.pad(blocks[..., :-1, -1, :], (0, 0, 1, 0))


def _earlier_block_mask(n_sub: int, sub: int, device) -> torch.Tensor:
    """[M, C] bool: position c lies in a sub-chunk strictly before sub-chunk m."""
    pos_block = torch.arange(n_sub * sub, device=device) // sub
    return pos_block[None, :] < torch.arange(n_sub, device=device)[:, None]


def _diagonal_factors(cum_blocks, start):
    """Sub-chunk factors e^{b_r - b_p} (≤ 1) and e^{b_p - b_s} (≥ 1, clamped at e^{MAX_DIAGONAL_SPAN}).

    cum_blocks [..., M, L, D], start [..., M, D] -> (to_row, from_col [..., M, L, D], exact [..., M]: the
    sub-chunks whose span exceeds MAX_DIAGONAL_SPAN, to be recomputed entry by entry; the clamp only
    keeps their factorized values, which are replaced, finite in the forward and backward passes)."""
    from_start = cum_blocks - start.unsqueeze(-2)  # b_r - b_p <= 0
    span = -from_start[..., -1, :]  # b_p - b_{p+L}, per channel
    exact = (span > MAX_DIAGONAL_SPAN).any(-1)
    return from_start.exp(), (-from_start).clamp(max=MAX_DIAGONAL_SPAN).exp(), exact


def _replace_blocks(fast, exact, compute_exact):
    """fast [..., M, X, Y] with the blocks where exact [..., M] is True replaced by compute_exact(flat index)."""
    index = exact.flatten().nonzero().squeeze(-1)
    if index.numel() == 0:
        return fast
    flat = fast.flatten(0, -3)
    return flat.index_copy(0, index, compute_exact(index)).view_as(fast)


def _entrywise_decay(cum_blocks, causal):
    """[n, L, D] -> [n, L, L, D]: e^{b_r - b_s} for s <= r (every exponent <= 0), 0 above the diagonal."""
    return _masked_exp(cum_blocks.unsqueeze(-2) - cum_blocks.unsqueeze(-3), causal[:, :, None])


def _scores_per_channel(q, k, cum_k, sub):
    """Intra-chunk scores with a per-channel key decay (secondary chunking).

    q, k, cum_k [..., C, Dk] -> (A_off [..., M, L, C]: keys in earlier sub-chunks only,
    A_diag [..., M, L, L]: the causal diagonal blocks).
    """
    C = q.shape[-2]
    n_sub = C // sub
    q_blocks = q.unflatten(-2, (n_sub, sub))  # [..., M, L, Dk]
    cum_blocks = cum_k.unflatten(-2, (n_sub, sub))
    k_blocks = k.unflatten(-2, (n_sub, sub))
    start = _block_starts(cum_k, n_sub)  # [..., M, Dk]: b_p, the running decay before each sub-chunk
    to_row, from_col, exact = _diagonal_factors(cum_blocks, start)
    q_off = q_blocks * to_row  # q_r e^{b_r - b_p}
    # diagonal blocks: (q_r e^{b_r - b_p}) · (k_s e^{b_p - b_s}), s <= r within one sub-chunk
    causal = torch.ones(sub, sub, dtype=torch.bool, device=q.device).tril()
    a_diag = (q_off @ (k_blocks * from_col).transpose(-1, -2)).masked_fill(~causal, 0.0)

    def exact_blocks(index):
        rows = lambda x: x.flatten(0, -3).index_select(0, index)  # noqa: E731
        decay = _entrywise_decay(rows(cum_blocks), causal)
        return torch.linalg.vecdot(rows(q_blocks).unsqueeze(-2) * decay, rows(k_blocks).unsqueeze(-3))

    a_diag = _replace_blocks(a_diag, exact, exact_blocks)
    if n_sub == 1:
        return None, a_diag
    # earlier sub-chunks, split at the query sub-chunk's start p: e^{b_r - b_p} · e^{b_p - b_s}
    earlier = _earlier_block_mask(n_sub, sub, q.device)  # [M, C]
    k_off = k.unsqueeze(-3) * _masked_exp(start.unsqueeze(-2) - cum_k.unsqueeze(-3), earlier[:, :, None])
    a_off = q_off @ k_off.transpose(-1, -2)  # [..., M, L, C]
    return a_off, a_diag


def _scores_scalar(q, k, cum_k):
    """Intra-chunk scores with no or a per-head key decay: [..., C, C], causal (s <= r)."""
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = q @ k.transpose(-1, -2)
    if cum_k is None:
        return scores.masked_fill(~causal, 0.0)
    return scores * _masked_exp(cum_k.unsqueeze(-1) - cum_k.unsqueeze(-2), causal)


def _split_blocks(scores, sub):
    """[..., C, C] causal scores -> (A_off [..., M, L, C] earlier sub-chunks only, A_diag [..., M, L, L])."""
    C = scores.shape[-1]
    n_sub = C // sub
    blocks = scores.unflatten(-1, (n_sub, sub)).unflatten(-3, (n_sub, sub))  # [..., M, L, M, L]
    a_diag = torch.diagonal(blocks, dim1=-4, dim2=-2).movedim(-1, -3)  # [..., M, L, L]
    if n_sub == 1:
        return None, a_diag
    earlier = _earlier_block_mask(n_sub, sub, scores.device)  # [M, C]
    a_off = scores.unflatten(-2, (n_sub, sub)) * earlier[:, None, :]
    return a_off, a_diag


def _join_blocks(a_off, a_diag):
    """Inverse of _split_blocks: one [..., C, C] score matrix."""
    n_sub, sub = a_diag.shape[-3], a_diag.shape[-1]
    eye = torch.eye(n_sub, dtype=a_diag.dtype, device=a_diag.device)
    full = torch.einsum("...mrs,mn->...mrns", a_diag, eye).flatten(-2).flatten(-3, -2)
    return full if a_off is None else full + a_off.flatten(-3, -2)


def _intra_value_decay(a_off, a_diag, v, cum_v):
    """Σ_{s≤r} A_rs (v_s ⊙ e^{bv_r - bv_s}) with a per-channel value decay, split like the keys."""
    n_sub, sub = a_diag.shape[-3], a_diag.shape[-1]
    v_blocks = v.unflatten(-2, (n_sub, sub))
    cum_blocks = cum_v.unflatten(-2, (n_sub, sub))
    start = _block_starts(cum_v, n_sub)
    to_row, from_col, exact = _diagonal_factors(cum_blocks, start)
    out = (a_diag @ (v_blocks * from_col)) * to_row  # [..., M, L, Dv]
    causal = torch.ones(sub, sub, dtype=torch.bool, device=v.device).tril()

    def exact_blocks(index):
        rows = lambda x: x.flatten(0, -3).index_select(0, index)  # noqa: E731
        decay = _entrywise_decay(rows(cum_blocks), causal)
        return (rows(a_diag).unsqueeze(-2) @ (rows(v_blocks).unsqueeze(-3) * decay)).squeeze(-2)

    out = _replace_blocks(out, exact, exact_blocks)
    if a_off is not None:
        earlier = _earlier_block_mask(n_sub, sub, v.device)
        v_off = v.unsqueeze(-3) * _masked_exp(start.unsqueeze(-2) - cum_v.unsqueeze(-3), earlier[:, :, None])
        out = out + (a_off @ v_off) * to_row
    return out.flatten(-3, -2)


def gla_chunk(
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
    sub_chunk_size: int = 16,
):
    """Chunked `gla` (same arguments and layout as seqmodels.kernels.gla.gla; unchecked).

    sub_chunk_size: secondary chunk for a per-channel decay (the largest divisor of chunk_size
    not above it is used). Returns (o in q's dtype, final_state in the compute dtype or None).
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    scale = Dk ** -0.5 if scale is None else scale
    gk, gv = log_decay_k, log_decay_v
    if gk is not None and gk.dim() == 3 and gv is not None:
        # a per-head key decay commutes through S: move it to the value side (one decay to split)
        gv, gk = gv + gk.unsqueeze(-1), None

    C = chunk_size
    n_chunks = -(-T // C)
    pad = n_chunks * C - T

    def prep(x):  # [B,T,H,...] -> [B,H,N,C,...], compute dtype, flipped for reverse, zero-padded
        if x is None:
            return None
        x = x.to(dtype)
        x = x.flip(1) if reverse else x
        x = x.movedim(1, 2)
        if pad:  # padding: k = v = 0 and log-decay 0 leave the state unchanged
            x = F.pad(x, (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
        return x.unflatten(2, (n_chunks, C))

    q, k, v, gk, gv = map(prep, (q, k, v, gk, gv))
    q = q * scale
    cum_k = None if gk is None else gk.cumsum(3)
    cum_v = None if gv is None else gv.cumsum(3)
    per_channel_k = gk is not None and gk.dim() == 5
    sub = _sub_chunk(C, sub_chunk_size)

    # intra-chunk, all chunks at once
    if per_channel_k:
        a_off, a_diag = _scores_per_channel(q, k, cum_k, sub)
        if gv is None:
            o = _join_blocks(a_off, a_diag) @ v
    else:
        scores = _scores_scalar(q, k, cum_k)
        if gv is None:
            o = scores @ v
        else:
            a_off, a_diag = _split_blocks(scores, sub)
    if gv is not None:
        o = _intra_value_decay(a_off, a_diag, v, cum_v)

    # per-chunk state contributions and decays, all chunks at once
    k_to_end, v_to_end = k, v
    state_decay = torch.ones((), dtype=dtype, device=q.device)
    q_from_start = q
    if gk is not None:
        total_k = cum_k[..., -1:, :] if per_channel_k else cum_k[..., -1:]
        k_to_end = k * ((total_k - cum_k).exp() if per_channel_k else (total_k - cum_k).exp().unsqueeze(-1))
        q_from_start = q * (cum_k.exp() if per_channel_k else cum_k.exp().unsqueeze(-1))
        state_decay = total_k.exp().transpose(-1, -2) if per_channel_k else total_k.exp().unsqueeze(-1)
    if gv is not None:
        total_v = cum_v[..., -1:, :]
        v_to_end = v * (total_v - cum_v).exp()
        state_decay = state_decay * total_v.exp()
    chunk_kv = k_to_end.transpose(-1, -2) @ v_to_end  # [B,H,N,Dk,Dv]
    state_decay = state_decay.expand(B, H, n_chunks, Dk, Dv) if state_decay.dim() else state_decay

    # inter-chunk state pass: the only loop
    state = (torch.zeros(B, H, Dk, Dv, dtype=dtype, device=q.device) if initial_state is None
             else initial_state.to(dtype))
    starts = []
    # unbind once: indexing [:, :, n] in the loop would cost a full-size zero-fill per chunk in backward
    decays = state_decay.unbind(2) if state_decay.dim() else [state_decay] * n_chunks
    for kv_n, decay_n in zip(chunk_kv.unbind(2), decays):
        starts.append(state)
        state = torch.addcmul(kv_n, state, decay_n)
    inter = q_from_start @ torch.stack(starts, dim=2)  # [B,H,N,C,Dv]
    if gv is not None:
        inter = inter * cum_v.exp()
    o = o + inter

    o = o.flatten(2, 3)[:, :, :T].movedim(2, 1)
    o = o.flip(1) if reverse else o
    return o.to(out_dtype), (state if output_final_state else None)
