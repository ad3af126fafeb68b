"""Chunked Triton kernels for gated linear attention (`gla` backend "triton"), forward and backward.

Recurrence (docs/architecture.md §3.1; GLA, Yang et al. 2023, arXiv 2312.06635, §4.1 recurrent form):
    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,     o_t = scale * S_t^T q_t
with per-channel log-gates g_t in R^{Dk} (<= 0) or one scalar per head broadcast over Dk
(RetNet / Lightning / simple GLA).

Chunked form (GLA §4.2-4.3: chunkwise form, secondary-level chunking; docs/architecture.md §3.3). Inside chunk i with
chunk-local cumulative gates b_r = sum_{u<=r} g_u and Gamma = b_last, state H_i at the chunk start:
    o_r     = scale * (q_r * e^{b_r})^T H_i + sum_{s<=r} A_rs v_s
    A_rs    = scale * sum_c q_rc k_sc e^{b_rc - b_sc}
    H_{i+1} = diag(e^{Gamma}) H_i + (K * e^{Gamma - b})^T V
Every exponent is <= 0: off-diagonal sub-blocks (sub-chunk BC=16) of A are referenced to the
first row of the query sub-block (q * e^{b_r - b_ref}, k * e^{b_ref - b_s}); the diagonal
sub-block is computed entry by entry. For a scalar gate e^{b_r - b_s} is formed per pair directly
(min(.,0) via the causal mask), so those kernels take whole chunks as rows (no sub-chunking).

Design: like fla, three forward launches (chunk states, intra-chunk scores A, outputs) instead of
one fused kernel sequential over chunks: the state pass is the only sequential part and is cheap
(one [BK,BV] tile update per chunk); scores and outputs are parallel over chunks, which fills the
GPU at small batch x heads. Chunk states are recomputed in the backward pass (memory), A is saved
(float32, [B,T,H,chunk]). Backward launches: states, reverse state pass, dA, dv, dq/dk, gate.

Backward (derivation, per batch and head; dO = dL/do, dH_{i+1} = dL/dH_{i+1}):
    dH_i   = diag(e^{Gamma}) dH_{i+1} + scale * (Q * e^{b})^T dO          (reverse state pass)
    dA_rs  = scale * dO_r . v_s  (s <= r)
    dq_r   = scale * e^{b_r} * (H_i dO_r) + sum_{s<=r} dA_rs k_s e^{b_r - b_s}
    dk_s   = e^{Gamma - b_s} * (dH_{i+1} v_s) + sum_{r>=s} dA_rs q_r e^{b_r - b_s}
    dv_s   = sum_{r>=s} A_rs dO_r + (k_s * e^{Gamma - b_s})^T dH_{i+1}
Gate gradient: with global cumulative gates B_t = sum_{u<=t} g_u, q_t appears only as
q_t e^{B_t}, k_s only as k_s e^{-B_s}, and the final state as e^{B_{T-1}} (S_0 + sum_s e^{-B_s} k_s v_s^T).
Hence dL/dB_t = q_t*dq_t - k_t*dk_t (+ sum_j S_T[:,j] dS_T[:,j] at t = T-1), and
dL/dg_u = sum_{t>=u} dL/dB_t (reverse cumulative sum, one kernel scanning chunks from the end);
a scalar gate also sums over channels. dq, dk are kept in float32 until this is done.

reverse=True is implemented by flipping q, k, v, log_decay_k along T in the wrapper (autograd
flips the gradients back). Numerics: loads are cast to float32 (float64 for float64 inputs) and
all accumulation is in that dtype; matmul operands are bf16/fp16 for bf16/fp16 inputs (as fla),
exact IEEE float32 / float64 otherwise. Compiled kernels take `scale` as a float32 scalar, so for
float64 inputs on GPU the wrapper folds it into q instead.
Autotuning only on a real GPU, never under TRITON_INTERPRET.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

SUB_CHUNK = 16  # secondary chunk size BC (GLA §4.2); also the smallest tl.dot dimension on GPU


def _row_block(chunk_size: int, scalar_gate: bool) -> int:
    """Rows per program in the intra-chunk kernels: a scalar gate forms e^{b_r - b_s} per pair and
    needs no secondary chunking, so it takes whole chunks (bigger matmuls); per-channel gates use BC."""
    return chunk_size if scalar_gate else SUB_CHUNK


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------
# Tile helpers: one (batch, head) slice of a [B, T, H, D] tensor is a [T, D] matrix with row
# stride H*D. `base` already points at the slice (int64 offset); offsets inside it fit in int32.
# Masked loads (zero fill) handle T and D that are not tile multiples.
# (Triton 3.9 removed block pointers; tensor descriptors need 16-byte aligned strides, odd D is not.)
# --------------------------------------------------------------------------------------------
@triton.jit
def _batch_head(axis: tl.constexpr, H: tl.constexpr):
    """(batch*head, batch, head) of this program from grid axis `axis`, as int64 (offsets can pass 2^31)."""
    ibh = tl.program_id(axis).to(tl.int64)
    return ibh, ibh // H, ibh % H


@triton.jit
def _load_tile(base, T, D: tl.constexpr, row_stride: tl.constexpr, t0, d0, BR: tl.constexpr, BD: tl.constexpr):
    """Rows t0..t0+BR, columns d0..d0+BD of a [T, D] slice, zero-padded: [BR, BD]."""
    r = t0 + tl.arange(0, BR)
    c = d0 + tl.arange(0, BD)
    return tl.load(base + r[:, None] * row_stride + c[None, :], mask=(r[:, None] < T) & (c[None, :] < D), other=0.0)


@triton.jit
def _load_tile_t(base, T, D: tl.constexpr, row_stride: tl.constexpr, t0, d0, BR: tl.constexpr, BD: tl.constexpr):
    """The same tile transposed: [BD, BR]."""
    r = t0 + tl.arange(0, BR)
    c = d0 + tl.arange(0, BD)
    return tl.load(base + c[:, None] + r[None, :] * row_stride, mask=(c[:, None] < D) & (r[None, :] < T), other=0.0)


@triton.jit
def _store_tile(base, x, T, D: tl.constexpr, row_stride: tl.constexpr, t0, d0, BR: tl.constexpr, BD: tl.constexpr):
    r = t0 + tl.arange(0, BR)
    c = d0 + tl.arange(0, BD)
    tl.store(base + r[:, None] * row_stride + c[None, :], x.to(base.dtype.element_ty),
             mask=(r[:, None] < T) & (c[None, :] < D))


# --------------------------------------------------------------------------------------------
# Chunk-local cumulative gates
# --------------------------------------------------------------------------------------------
@triton.jit
def _chunk_cumsum_kernel(g, gcum, T, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                         ACC: tl.constexpr):
    """gcum[b, t, h] = sum of g from the start of t's chunk to t, for a [B, T, H, D] gate (D = 1: scalar)."""
    it = tl.program_id(0)
    ibh, ib, ih = _batch_head(1, H)
    base = (ib * T * H + ih) * D
    for db in range(0, tl.cdiv(D, BD)):
        x = _load_tile(g + base, T, D, H * D, it * BT, db * BD, BT, BD).to(ACC)
        _store_tile(gcum + base, tl.cumsum(x, axis=0), T, D, H * D, it * BT, db * BD, BT, BD)


# --------------------------------------------------------------------------------------------
# Chunk-state scan (forward states and, reversed, their gradients)
# --------------------------------------------------------------------------------------------
@triton.jit
def _state_scan_kernel(
    x, y, gcum, out, init, final, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    SCALAR_GATE: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """One [BK, BV] tile of a state carried across chunks; out[b, i, h] = the carry entering chunk i.

    forward (x=k, y=v):    H_{i+1} = diag(e^{Gamma}) H_i + (K * e^{Gamma - b})^T V, out = states at chunk starts
    REVERSE (x=q, y=dO):   dH_i = diag(e^{Gamma}) dH_{i+1} + scale (Q * e^{b})^T dO, out[i] = dL/d(state after
                           chunk i); init = dL/d(final state), final = dL/d(initial state).
    Padded rows load x = 0 and g = 0, so every exponent stays <= 0 and finite.
    """
    ik = tl.program_id(0)
    iv = tl.program_id(1)
    ibh, ib, ih = _batch_head(2, H)
    x += (ib * T * H + ih) * K
    y += (ib * T * H + ih) * V
    offs_k = ik * BK + tl.arange(0, BK)
    mk = offs_k < K
    state = tl.zeros([BK, BV], dtype=ACC)
    if HAS_INIT:
        state += _load_tile(init + ibh * K * V, K, V, V, ik * BK, iv * BV, BK, BV).to(ACC)
    for ii in range(NT):
        if REVERSE:
            i = NT - 1 - ii
        else:
            i = ii
        _store_tile(out + ((ib * NT + i) * H + ih) * K * V, state, K, V, V, ik * BK, iv * BV, BK, BV)
        t = i * BT + tl.arange(0, BT)
        t_last = tl.minimum(i * BT + BT, T) - 1
        x_t = _load_tile_t(x, T, K, H * K, i * BT, ik * BK, BT, BK).to(ACC)  # [BK, BT]
        y_blk = _load_tile(y, T, V, H * V, i * BT, iv * BV, BT, BV)
        if SCALAR_GATE:
            g = tl.load(gcum + (ib * T + t) * H + ih, mask=t < T, other=0.0).to(ACC)
            g_last = tl.load(gcum + (ib * T + t_last) * H + ih).to(ACC)
            if REVERSE:
                x_t = x_t * tl.exp(g)[None, :]
            else:
                x_t = x_t * tl.exp(g_last - g)[None, :]
            state = state * tl.exp(g_last)
        else:
            g_t = _load_tile_t(gcum + (ib * T * H + ih) * K, T, K, H * K, i * BT, ik * BK, BT, BK).to(ACC)
            g_last = tl.load(gcum + ((ib * T + t_last) * H + ih) * K + offs_k, mask=mk, other=0.0).to(ACC)
            if REVERSE:
                x_t = x_t * tl.exp(g_t)
            else:
                x_t = x_t * tl.exp(g_last[:, None] - g_t)
            state = state * tl.exp(g_last)[:, None]
        state += scale * tl.dot(x_t.to(DOT), y_blk.to(DOT), input_precision=PREC, out_dtype=ACC)
    if STORE_FINAL:
        _store_tile(final + ibh * K * V, state, K, V, V, ik * BK, iv * BV, BK, BV)


# --------------------------------------------------------------------------------------------
# Forward: intra-chunk scores A (secondary chunking)
# --------------------------------------------------------------------------------------------
@triton.jit
def _intra_scores_kernel(
    q, k, gcum, A, scale, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    SCALAR_GATE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """A[b, t, h, s_local] = scale * sum_c q_tc k_sc e^{b_tc - b_sc} for s <= t in t's chunk, else 0.

    One program = BC query rows of one chunk (a sub-block; the whole chunk for a scalar gate),
    all BT columns of the chunk.
    """
    NC: tl.constexpr = BT // BC
    ic = tl.program_id(0)
    ibh, ib, ih = _batch_head(1, H)
    it = ic // NC
    isub = ic % NC
    t0 = it * BT
    r0 = t0 + isub * BC
    q += (ib * T * H + ih) * K
    k += (ib * T * H + ih) * K
    g_base = gcum + (ib * T * H + ih) * K
    rl = isub * BC + tl.arange(0, BC)  # local row index within the chunk
    cl = tl.arange(0, BT)  # local column index within the chunk
    mr = t0 + rl < T
    mc = t0 + cl < T
    causal = (rl[:, None] >= cl[None, :]) & mr[:, None] & mc[None, :]
    acc = tl.zeros([BC, BT], dtype=ACC)
    if SCALAR_GATE:
        for kb in range(0, tl.cdiv(K, BK)):
            q_i = _load_tile(q, T, K, H * K, r0, kb * BK, BC, BK)
            k_t = _load_tile_t(k, T, K, H * K, t0, kb * BK, BT, BK)
            acc += tl.dot(q_i.to(DOT), k_t.to(DOT), input_precision=PREC, out_dtype=ACC)
        g_r = tl.load(gcum + (ib * T + t0 + rl) * H + ih, mask=mr, other=0.0).to(ACC)
        g_c = tl.load(gcum + (ib * T + t0 + cl) * H + ih, mask=mc, other=0.0).to(ACC)
        acc = acc * tl.exp(tl.where(causal, g_r[:, None] - g_c[None, :], float("-inf")))
    else:
        before = (cl < isub * BC) & mc
        for kb in range(0, tl.cdiv(K, BK)):
            offs_k = kb * BK + tl.arange(0, BK)
            mk = offs_k < K
            q_i = _load_tile(q, T, K, H * K, r0, kb * BK, BC, BK).to(ACC)
            g_i = _load_tile(g_base, T, K, H * K, r0, kb * BK, BC, BK).to(ACC)
            k_t = _load_tile_t(k, T, K, H * K, t0, kb * BK, BT, BK).to(ACC)
            g_t = _load_tile_t(g_base, T, K, H * K, t0, kb * BK, BT, BK).to(ACC)
            # off-diagonal sub-blocks: reference = first row of the query sub-block
            g_ref = tl.load(g_base + tl.minimum(r0, T - 1) * H * K + offs_k, mask=mk, other=0.0).to(ACC)
            q_rel = q_i * tl.exp(tl.where(mr[:, None], g_i - g_ref[None, :], 0.0))
            k_rel = k_t * tl.exp(tl.where(before[None, :], g_ref[:, None] - g_t, float("-inf")))
            acc += tl.dot(q_rel.to(DOT), k_rel.to(DOT), input_precision=PREC, out_dtype=ACC)
            # diagonal sub-block, entry by entry
            for j in range(BC):
                s = r0 + j
                s_in = tl.minimum(s, T - 1)  # a row past T is excluded by `ok` below
                k_j = tl.load(k + s_in * H * K + offs_k, mask=mk, other=0.0).to(ACC)
                g_j = tl.load(g_base + s_in * H * K + offs_k, mask=mk, other=0.0).to(ACC)
                ok = (rl >= isub * BC + j) & mr & (s < T)
                e = tl.exp(tl.where(ok[:, None], g_i - g_j[None, :], float("-inf")))
                val = tl.sum(q_i * k_j[None, :] * e, axis=1)
                acc = tl.where(cl[None, :] == isub * BC + j, acc + val[:, None], acc)
    _store_tile(A + (ib * T * H + ih) * BT, acc * scale, T, BT, H * BT, r0, 0, BC, BT)


# --------------------------------------------------------------------------------------------
# Forward: outputs
# --------------------------------------------------------------------------------------------
@triton.jit
def _output_fwd_kernel(
    q, v, gcum, h, A, o, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    SCALAR_GATE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """o = scale * (Q * e^{b}) H_i + A V for one chunk and one Dv block."""
    iv = tl.program_id(0)
    it = tl.program_id(1)
    ibh, ib, ih = _batch_head(2, H)
    t0 = it * BT
    t = t0 + tl.arange(0, BT)
    acc = tl.zeros([BT, BV], dtype=ACC)
    if SCALAR_GATE:
        g = tl.load(gcum + (ib * T + t) * H + ih, mask=t < T, other=0.0).to(ACC)
    for kb in range(0, tl.cdiv(K, BK)):
        q_blk = _load_tile(q + (ib * T * H + ih) * K, T, K, H * K, t0, kb * BK, BT, BK).to(ACC)
        if SCALAR_GATE:
            q_dec = q_blk * tl.exp(g)[:, None]
        else:
            g_blk = _load_tile(gcum + (ib * T * H + ih) * K, T, K, H * K, t0, kb * BK, BT, BK).to(ACC)
            q_dec = q_blk * tl.exp(g_blk)
        h_blk = _load_tile(h + ((ib * NT + it) * H + ih) * K * V, K, V, V, kb * BK, iv * BV, BK, BV)
        acc += tl.dot(q_dec.to(DOT), h_blk.to(DOT), input_precision=PREC, out_dtype=ACC)
    acc = acc * scale
    a_blk = _load_tile(A + (ib * T * H + ih) * BT, T, BT, H * BT, t0, 0, BT, BT)
    v_blk = _load_tile(v + (ib * T * H + ih) * V, T, V, H * V, t0, iv * BV, BT, BV)
    acc += tl.dot(a_blk.to(DOT), v_blk.to(DOT), input_precision=PREC, out_dtype=ACC)
    _store_tile(o + (ib * T * H + ih) * V, acc, T, V, H * V, t0, iv * BV, BT, BV)


# --------------------------------------------------------------------------------------------
# Backward: gradient of the intra-chunk scores
# --------------------------------------------------------------------------------------------
@triton.jit
def _intra_dscores_kernel(
    do, v, dA, scale, T,
    H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """dA[b, r, h, s_local] = scale * dO_r . v_s for s <= r in r's chunk, else 0."""
    it = tl.program_id(0)
    ibh, ib, ih = _batch_head(1, H)
    t0 = it * BT
    cl = tl.arange(0, BT)
    mt = t0 + cl < T
    acc = tl.zeros([BT, BT], dtype=ACC)
    for vb in range(0, tl.cdiv(V, BV)):
        do_blk = _load_tile(do + (ib * T * H + ih) * V, T, V, H * V, t0, vb * BV, BT, BV)
        v_t = _load_tile_t(v + (ib * T * H + ih) * V, T, V, H * V, t0, vb * BV, BT, BV)
        acc += tl.dot(do_blk.to(DOT), v_t.to(DOT), input_precision=PREC, out_dtype=ACC)
    causal = (cl[:, None] >= cl[None, :]) & mt[:, None] & mt[None, :]
    acc = tl.where(causal, acc * scale, 0.0)
    _store_tile(dA + (ib * T * H + ih) * BT, acc, T, BT, H * BT, t0, 0, BT, BT)


# --------------------------------------------------------------------------------------------
# Backward: dv
# --------------------------------------------------------------------------------------------
@triton.jit
def _dv_kernel(
    k, gcum, A, do, dh, dv, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    SCALAR_GATE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """dv = A^T dO + (K * e^{Gamma - b}) dH_{i+1} for one chunk and one Dv block."""
    iv = tl.program_id(0)
    it = tl.program_id(1)
    ibh, ib, ih = _batch_head(2, H)
    t0 = it * BT
    t = t0 + tl.arange(0, BT)
    t_last = tl.minimum(t0 + BT, T) - 1
    a_t = _load_tile_t(A + (ib * T * H + ih) * BT, T, BT, H * BT, t0, 0, BT, BT)  # [s, r]
    do_blk = _load_tile(do + (ib * T * H + ih) * V, T, V, H * V, t0, iv * BV, BT, BV)
    acc = tl.dot(a_t.to(DOT), do_blk.to(DOT), input_precision=PREC, out_dtype=ACC)
    if SCALAR_GATE:
        g = tl.load(gcum + (ib * T + t) * H + ih, mask=t < T, other=0.0).to(ACC)
        g_last = tl.load(gcum + (ib * T + t_last) * H + ih).to(ACC)
        k_scale = tl.exp(g_last - g)  # padded rows: g = 0, k = 0
    for kb in range(0, tl.cdiv(K, BK)):
        k_blk = _load_tile(k + (ib * T * H + ih) * K, T, K, H * K, t0, kb * BK, BT, BK).to(ACC)
        if SCALAR_GATE:
            k_dec = k_blk * k_scale[:, None]
        else:
            offs_k = kb * BK + tl.arange(0, BK)
            g_blk = _load_tile(gcum + (ib * T * H + ih) * K, T, K, H * K, t0, kb * BK, BT, BK).to(ACC)
            g_last_k = tl.load(gcum + ((ib * T + t_last) * H + ih) * K + offs_k, mask=offs_k < K, other=0.0).to(ACC)
            k_dec = k_blk * tl.exp(g_last_k[None, :] - g_blk)
        dh_blk = _load_tile(dh + ((ib * NT + it) * H + ih) * K * V, K, V, V, kb * BK, iv * BV, BK, BV)
        acc += tl.dot(k_dec.to(DOT), dh_blk.to(DOT), input_precision=PREC, out_dtype=ACC)
    _store_tile(dv + (ib * T * H + ih) * V, acc, T, V, H * V, t0, iv * BV, BT, BV)


# --------------------------------------------------------------------------------------------
# Backward: dq, dk (secondary chunking, every exponent <= 0)
# --------------------------------------------------------------------------------------------
@triton.jit
def _dqk_kernel(
    q, k, v, gcum, h, dh, do, dA, dq, dk, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    SCALAR_GATE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """dq, dk for BC rows I (a sub-block; the whole chunk for a scalar gate) and one Dk block.

    dq_r = scale e^{b_r} (H_i dO_r) + sum_{s<=r} dA_rs k_s e^{b_r - b_s}
    dk_s = e^{Gamma - b_s} (dH_{i+1} v_s) + sum_{r>=s} dA_rs q_r e^{b_r - b_s}
    """
    NC: tl.constexpr = BT // BC
    ik = tl.program_id(0)
    ic = tl.program_id(1)
    ibh, ib, ih = _batch_head(2, H)
    it = ic // NC
    isub = ic % NC
    t0 = it * BT
    r0 = t0 + isub * BC
    q += (ib * T * H + ih) * K
    k += (ib * T * H + ih) * K
    g_base = gcum + (ib * T * H + ih) * K
    dA += (ib * T * H + ih) * BT
    rl = isub * BC + tl.arange(0, BC)
    cl = tl.arange(0, BT)
    mr = t0 + rl < T
    mc = t0 + cl < T
    t_last = tl.minimum(t0 + BT, T) - 1
    offs_k = ik * BK + tl.arange(0, BK)
    mk = offs_k < K
    # inter-chunk parts: dO_I H_i^T and v_I dH_{i+1}^T
    dq_acc = tl.zeros([BC, BK], dtype=ACC)
    dk_acc = tl.zeros([BC, BK], dtype=ACC)
    state_base = ((ib * NT + it) * H + ih) * K * V
    for vb in range(0, tl.cdiv(V, BV)):
        do_i = _load_tile(do + (ib * T * H + ih) * V, T, V, H * V, r0, vb * BV, BC, BV)
        v_i = _load_tile(v + (ib * T * H + ih) * V, T, V, H * V, r0, vb * BV, BC, BV)
        h_t = _load_tile_t(h + state_base, K, V, V, ik * BK, vb * BV, BK, BV)  # [BV, BK]
        dh_t = _load_tile_t(dh + state_base, K, V, V, ik * BK, vb * BV, BK, BV)
        dq_acc += tl.dot(do_i.to(DOT), h_t.to(DOT), input_precision=PREC, out_dtype=ACC)
        dk_acc += tl.dot(v_i.to(DOT), dh_t.to(DOT), input_precision=PREC, out_dtype=ACC)
    q_c = _load_tile(q, T, K, H * K, t0, ik * BK, BT, BK).to(ACC)
    k_c = _load_tile(k, T, K, H * K, t0, ik * BK, BT, BK).to(ACC)
    # dA rows of sub-block I [r in I, s in chunk] and its columns, transposed [s in I, r in chunk]
    dA_r = _load_tile(dA, T, BT, H * BT, r0, 0, BC, BT).to(ACC)
    dA_ct = _load_tile_t(dA, T, BT, H * BT, t0, isub * BC, BT, BC).to(ACC)
    if SCALAR_GATE:
        g_i = tl.load(gcum + (ib * T + t0 + rl) * H + ih, mask=mr, other=0.0).to(ACC)
        g_c = tl.load(gcum + (ib * T + t0 + cl) * H + ih, mask=mc, other=0.0).to(ACC)
        g_last = tl.load(gcum + (ib * T + t_last) * H + ih).to(ACC)
        dq_acc = dq_acc * (scale * tl.exp(g_i))[:, None]
        dk_acc = dk_acc * tl.exp(tl.where(mr, g_last - g_i, float("-inf")))[:, None]
        causal_r = (rl[:, None] >= cl[None, :]) & mr[:, None] & mc[None, :]  # r in I, s in chunk
        dA_r = dA_r * tl.exp(tl.where(causal_r, g_i[:, None] - g_c[None, :], float("-inf")))
        dq_acc += tl.dot(dA_r.to(DOT), k_c.to(DOT), input_precision=PREC, out_dtype=ACC)
        causal_c = (cl[None, :] >= rl[:, None]) & mr[:, None] & mc[None, :]  # s in I, r in chunk
        dA_ct = dA_ct * tl.exp(tl.where(causal_c, g_c[None, :] - g_i[:, None], float("-inf")))
        dk_acc += tl.dot(dA_ct.to(DOT), q_c.to(DOT), input_precision=PREC, out_dtype=ACC)
    else:
        g_i = _load_tile(g_base, T, K, H * K, r0, ik * BK, BC, BK).to(ACC)
        g_c = _load_tile(g_base, T, K, H * K, t0, ik * BK, BT, BK).to(ACC)
        g_last = tl.load(g_base + t_last * H * K + offs_k, mask=mk, other=0.0).to(ACC)
        dq_acc = dq_acc * scale * tl.exp(g_i)
        dk_acc = dk_acc * tl.exp(tl.where(mr[:, None], g_last[None, :] - g_i, float("-inf")))
        # dq, earlier sub-blocks: reference = first row of I
        g_first = tl.load(g_base + tl.minimum(r0, T - 1) * H * K + offs_k, mask=mk, other=0.0).to(ACC)
        before = (cl < isub * BC) & mc
        k_rel = k_c * tl.exp(tl.where(before[:, None], g_first[None, :] - g_c, float("-inf")))
        dq_off = tl.dot(dA_r.to(DOT), k_rel.to(DOT), input_precision=PREC, out_dtype=ACC)
        dq_acc += dq_off * tl.exp(tl.where(mr[:, None], g_i - g_first[None, :], float("-inf")))
        # dk, later sub-blocks: reference = last (valid) row of I
        g_end = tl.load(g_base + tl.minimum(r0 + BC - 1, T - 1) * H * K + offs_k, mask=mk, other=0.0).to(ACC)
        after = (cl >= isub * BC + BC) & mc
        q_rel = q_c * tl.exp(tl.where(after[:, None], g_c - g_end[None, :], float("-inf")))
        dk_off = tl.dot(dA_ct.to(DOT), q_rel.to(DOT), input_precision=PREC, out_dtype=ACC)
        dk_acc += dk_off * tl.exp(tl.where(mr[:, None], g_end[None, :] - g_i, float("-inf")))
        # diagonal sub-block, entry by entry
        for j in range(BC):
            s = r0 + j
            s_in = tl.minimum(s, T - 1)  # a row past T is excluded by the masks below
            k_j = tl.load(k + s_in * H * K + offs_k, mask=mk, other=0.0).to(ACC)
            q_j = tl.load(q + s_in * H * K + offs_k, mask=mk, other=0.0).to(ACC)
            g_j = tl.load(g_base + s_in * H * K + offs_k, mask=mk, other=0.0).to(ACC)
            jl = isub * BC + j
            dA_col = tl.sum(tl.where(cl[None, :] == jl, dA_r, 0.0), axis=1)  # dA[r, j], r in I
            dA_row = tl.sum(tl.where(cl[None, :] == jl, dA_ct, 0.0), axis=1)  # dA[j, s], s in I
            ok_q = (rl >= jl) & mr & (s < T)
            ok_k = (rl <= jl) & mr & (s < T)
            dq_acc += dA_col[:, None] * k_j[None, :] * tl.exp(tl.where(ok_q[:, None], g_i - g_j[None, :], float("-inf")))
            dk_acc += dA_row[:, None] * q_j[None, :] * tl.exp(tl.where(ok_k[:, None], g_j[None, :] - g_i, float("-inf")))
    _store_tile(dq + (ib * T * H + ih) * K, dq_acc, T, K, H * K, r0, ik * BK, BC, BK)
    _store_tile(dk + (ib * T * H + ih) * K, dk_acc, T, K, H * K, r0, ik * BK, BC, BK)


# --------------------------------------------------------------------------------------------
# Backward: gate gradient (reverse cumulative sum of q*dq - k*dk)
# --------------------------------------------------------------------------------------------
@triton.jit
def _dgate_kernel(
    q, k, dq, dk, dg, carry0, T, NT,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    SCALAR_GATE: tl.constexpr, HAS_CARRY: tl.constexpr, ACC: tl.constexpr,
):
    """dg_u = carry0 + sum_{t>=u} (q_t*dq_t - k_t*dk_t), scanned over chunks from the end.

    carry0 = sum_j S_T[:, j] dS_T[:, j] (final-state term; summed over channels for a scalar gate).
    Per-channel: one program per (Dk block, batch*head); scalar: one per batch*head, summing over Dk.
    """
    ik = tl.program_id(0)
    ibh, ib, ih = _batch_head(1, H)
    base = (ib * T * H + ih) * K
    if SCALAR_GATE:
        carry = tl.sum(tl.zeros([BT], dtype=ACC), axis=0)
        if HAS_CARRY:
            carry += tl.load(carry0 + ibh).to(ACC)
        for ii in range(NT):
            i = NT - 1 - ii
            t = i * BT + tl.arange(0, BT)
            d_b = tl.zeros([BT], dtype=ACC)
            for kb in range(0, tl.cdiv(K, BK)):
                q_b = _load_tile(q + base, T, K, H * K, i * BT, kb * BK, BT, BK).to(ACC)
                k_b = _load_tile(k + base, T, K, H * K, i * BT, kb * BK, BT, BK).to(ACC)
                dq_b = _load_tile(dq + base, T, K, H * K, i * BT, kb * BK, BT, BK).to(ACC)
                dk_b = _load_tile(dk + base, T, K, H * K, i * BT, kb * BK, BT, BK).to(ACC)
                d_b += tl.sum(q_b * dq_b - k_b * dk_b, axis=1)
            out = tl.cumsum(d_b, axis=0, reverse=True) + carry
            tl.store(dg + (ib * T + t) * H + ih, out.to(dg.dtype.element_ty), mask=t < T)
            carry += tl.sum(d_b, axis=0)
    else:
        offs_k = ik * BK + tl.arange(0, BK)
        carry = tl.zeros([BK], dtype=ACC)
        if HAS_CARRY:
            carry += tl.load(carry0 + ibh * K + offs_k, mask=offs_k < K, other=0.0).to(ACC)
        for ii in range(NT):
            i = NT - 1 - ii
            q_b = _load_tile(q + base, T, K, H * K, i * BT, ik * BK, BT, BK).to(ACC)
            k_b = _load_tile(k + base, T, K, H * K, i * BT, ik * BK, BT, BK).to(ACC)
            dq_b = _load_tile(dq + base, T, K, H * K, i * BT, ik * BK, BT, BK).to(ACC)
            dk_b = _load_tile(dk + base, T, K, H * K, i * BT, ik * BK, BT, BK).to(ACC)
            d_b = q_b * dq_b - k_b * dk_b
            out = tl.cumsum(d_b, axis=0, reverse=True) + carry[None, :]
            _store_tile(dg + base, out, T, K, H * K, i * BT, ik * BK, BT, BK)
            carry += tl.sum(d_b, axis=0)


# --------------------------------------------------------------------------------------------
# Launch helpers
# --------------------------------------------------------------------------------------------
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _numerics(dtype: torch.dtype):
    """(accumulation torch dtype, accumulation tl dtype, matmul operand tl dtype, tl.dot input_precision)."""
    if dtype == torch.float64:
        return torch.float64, tl.float64, tl.float64, "ieee"
    if dtype == torch.float32:
        return torch.float32, tl.float32, tl.float32, "ieee"
    return torch.float32, tl.float32, _TL_DTYPES[dtype], None


def _block(n: int, cap: int = 64) -> int:
    """Power-of-2 tile covering n (masked), at least 16 (tl.dot minimum), at most cap."""
    return max(16, min(cap, triton.next_power_of_2(n)))


_TUNED = {}


def _launch(kernel, grid, args, meta, tune_key, tune_space):
    """Run `kernel` with fixed tiles `meta` under the interpreter; autotune over `tune_space` on GPU.

    tune_space: list of dicts of tile sizes (plus num_warps); grid is a function of the meta dict.
    """
    if _interpreting() or not tune_space:
        kernel[grid(meta)](*args, **meta)
        return
    name = (kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel), repr(tune_space))
    tuned = _TUNED.get(name)
    if tuned is None:
        configs = []
        for cfg in tune_space:
            cfg = dict(cfg)
            warps = cfg.pop("num_warps")
            stages = cfg.pop("num_stages", 2)
            configs.append(triton.Config(cfg, num_warps=warps, num_stages=stages))
        tuned = triton.autotune(configs=configs, key=tune_key)(kernel)
        _TUNED[name] = tuned
    fixed = {k: v for k, v in meta.items() if k not in tune_space[0]}
    tuned[lambda m: grid({**meta, **m})](*args, **fixed)


def _tile_space(K: int, V: int, keys=("BK", "BV")):
    """Candidate tiles for GPU autotuning (each capped to the padded dims)."""
    space = []
    for bk in sorted({_block(K, 32), _block(K, 64)}):
        for bv in sorted({_block(V, 32), _block(V, 64)}):
            for warps in (4, 8):
                cfg = {"num_warps": warps}
                if "BK" in keys:
                    cfg["BK"] = bk
                if "BV" in keys:
                    cfg["BV"] = bv
                if cfg not in space:
                    space.append(cfg)
    return space


# --------------------------------------------------------------------------------------------
# Forward driver
# --------------------------------------------------------------------------------------------
def _chunk_local_cumsum(log_decay: torch.Tensor, chunk_size: int, acc_dtype: torch.dtype) -> torch.Tensor:
    """b_t = sum of log-decays from the start of t's chunk to t (along dim 1), in acc_dtype, same shape."""
    B, T, H = log_decay.shape[:3]
    D = log_decay.shape[3] if log_decay.dim() == 4 else 1
    gcum = log_decay.new_empty(log_decay.shape, dtype=acc_dtype)
    meta = dict(H=H, D=D, BT=chunk_size, BD=min(_block(D), 64), ACC=_numerics(acc_dtype)[1])
    _launch(_chunk_cumsum_kernel, lambda m: (triton.cdiv(T, chunk_size), B * H), (log_decay, gcum, T), meta, [], [])
    return gcum


def _state_scan(x, y, gcum, init, scale, chunk_size, reverse, final_dtype, scalar_gate):
    """Carries entering each chunk [B, NT, H, K, V] (matmul dtype) and the carry after the scan
    (None unless final_dtype is given). Forward: x=k, y=v; reverse (gradients): x=q, y=dO."""
    B, T, H, K = x.shape
    V = y.shape[-1]
    NT = triton.cdiv(T, chunk_size)
    acc_t, acc_tl, dot_tl, prec = _numerics(x.dtype)
    out = x.new_empty((B, NT, H, K, V), dtype=x.dtype if x.dtype in (torch.bfloat16, torch.float16) else acc_t)
    final = x.new_empty((B, H, K, V), dtype=final_dtype) if final_dtype is not None else None
    args = (x, y, gcum, out, init if init is not None else out, final if final is not None else out, scale, T, NT)
    meta = dict(H=H, K=K, V=V, BT=chunk_size, BK=_block(K), BV=_block(V), SCALAR_GATE=scalar_gate, REVERSE=reverse,
                HAS_INIT=init is not None, STORE_FINAL=final is not None, ACC=acc_tl, DOT=dot_tl, PREC=prec)
    grid = lambda m: (triton.cdiv(K, m["BK"]), triton.cdiv(V, m["BV"]), B * H)
    _launch(_state_scan_kernel, grid, args, meta, ["K", "V", "BT", "REVERSE"], _tile_space(K, V))
    return out, final


def _intra_scores(q, k, gcum, scale, chunk_size, scalar_gate):
    """A [B, T, H, BT] (acc dtype): scaled, causally masked intra-chunk scores."""
    B, T, H, K = q.shape
    NT = triton.cdiv(T, chunk_size)
    acc_t, acc_tl, dot_tl, prec = _numerics(q.dtype)
    A = q.new_empty((B, T, H, chunk_size), dtype=acc_t)
    bc = _row_block(chunk_size, scalar_gate)
    meta = dict(H=H, K=K, BT=chunk_size, BC=bc, BK=_block(K), SCALAR_GATE=scalar_gate,
                ACC=acc_tl, DOT=dot_tl, PREC=prec)
    grid = lambda m: (NT * (chunk_size // bc), B * H)
    _launch(_intra_scores_kernel, grid, (q, k, gcum, A, scale, T), meta, ["K", "BT"],
            _tile_space(K, 16, keys=("BK",)))
    return A


def _outputs(q, v, gcum, h, A, scale, chunk_size, scalar_gate):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, chunk_size)
    _, acc_tl, dot_tl, prec = _numerics(q.dtype)
    o = torch.empty_like(v)
    meta = dict(H=H, K=K, V=V, BT=chunk_size, BK=_block(K), BV=_block(V), SCALAR_GATE=scalar_gate,
                ACC=acc_tl, DOT=dot_tl, PREC=prec)
    grid = lambda m: (triton.cdiv(V, m["BV"]), NT, B * H)
    _launch(_output_fwd_kernel, grid, (q, v, gcum, h, A, o, scale, T, NT), meta, ["K", "V", "BT"], _tile_space(K, V))
    return o


def _intra_dscores(do, v, scale, chunk_size):
    B, T, H, V = v.shape
    NT = triton.cdiv(T, chunk_size)
    acc_t, acc_tl, dot_tl, prec = _numerics(v.dtype)
    dA = v.new_empty((B, T, H, chunk_size), dtype=acc_t)
    meta = dict(H=H, V=V, BT=chunk_size, BV=_block(V), ACC=acc_tl, DOT=dot_tl, PREC=prec)
    grid = lambda m: (NT, B * H)
    _launch(_intra_dscores_kernel, grid, (do, v, dA, scale, T), meta, ["V", "BT"], _tile_space(16, V, keys=("BV",)))
    return dA


def _dv(k, gcum, A, do, dh, chunk_size, scalar_gate):
    B, T, H, K = k.shape
    V = do.shape[-1]
    NT = triton.cdiv(T, chunk_size)
    _, acc_tl, dot_tl, prec = _numerics(k.dtype)
    dv = torch.empty_like(do)
    meta = dict(H=H, K=K, V=V, BT=chunk_size, BK=_block(K), BV=_block(V), SCALAR_GATE=scalar_gate,
                ACC=acc_tl, DOT=dot_tl, PREC=prec)
    grid = lambda m: (triton.cdiv(V, m["BV"]), NT, B * H)
    _launch(_dv_kernel, grid, (k, gcum, A, do, dh, dv, T, NT), meta, ["K", "V", "BT"], _tile_space(K, V))
    return dv


def _dqk(q, k, v, gcum, h, dh, do, dA, scale, chunk_size, scalar_gate):
    """dq, dk in the accumulation dtype (the gate gradient needs them before rounding)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, chunk_size)
    acc_t, acc_tl, dot_tl, prec = _numerics(q.dtype)
    dq = q.new_empty(q.shape, dtype=acc_t)
    dk = q.new_empty(q.shape, dtype=acc_t)
    bc = _row_block(chunk_size, scalar_gate)
    meta = dict(H=H, K=K, V=V, BT=chunk_size, BC=bc, BK=_block(K), BV=_block(V),
                SCALAR_GATE=scalar_gate, ACC=acc_tl, DOT=dot_tl, PREC=prec)
    grid = lambda m: (triton.cdiv(K, m["BK"]), NT * (chunk_size // bc), B * H)
    _launch(_dqk_kernel, grid, (q, k, v, gcum, h, dh, do, dA, dq, dk, scale, T, NT), meta, ["K", "V", "BT"],
            _tile_space(K, V))
    return dq, dk


def _dgate(q, k, dq, dk, ht, dht, chunk_size, scalar_gate, gate_dtype):
    """dL/d log_decay_k: reverse cumulative sum over T of q*dq - k*dk plus the final-state term."""
    B, T, H, K = q.shape
    NT = triton.cdiv(T, chunk_size)
    acc_t, acc_tl, _, _ = _numerics(q.dtype)
    carry = None
    if dht is not None:
        carry = (ht * dht.to(ht.dtype)).sum(-1)  # [B, H, K]
        carry = (carry.sum(-1) if scalar_gate else carry).to(acc_t).contiguous()
    dg = q.new_empty(q.shape[:3] if scalar_gate else q.shape, dtype=gate_dtype)
    meta = dict(H=H, K=K, BT=chunk_size, BK=_block(K), SCALAR_GATE=scalar_gate, HAS_CARRY=carry is not None, ACC=acc_tl)
    grid = lambda m: (1 if scalar_gate else triton.cdiv(K, m["BK"]), B * H)
    _launch(_dgate_kernel, grid, (q, k, dq, dk, dg, carry if carry is not None else dg, T, NT), meta, ["K", "BT"],
            _tile_space(K, 16, keys=("BK",)))
    return dg


def unsupported_reason(q: torch.Tensor, chunk_size: int) -> Optional[str]:
    """Why these kernels cannot serve a call (a short phrase for the fallback log), or None if they can.

    Checked: the chunk size (a power of 2 >= SUB_CHUNK), the device (CUDA, or CPU under
    TRITON_INTERPRET=1) and the dtype (float64/float32/bfloat16/float16)."""
    if chunk_size < SUB_CHUNK or chunk_size & (chunk_size - 1):
        return f"the Triton kernel needs chunk_size a power of 2 >= {SUB_CHUNK} (got {chunk_size})"
    if not q.is_cuda and not _interpreting():
        return f"the Triton kernel needs CUDA tensors (got {q.device.type}; CPU runs only under TRITON_INTERPRET=1)"
    if q.dtype not in _TL_DTYPES:
        return f"the Triton kernel has no {q.dtype} path"
    return None


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < SUB_CHUNK or chunk_size & (chunk_size - 1):
        raise ValueError(
            f"chunk_size={chunk_size} is not supported by the triton backend; expected a power of 2 >= {SUB_CHUNK}"
        )


class _ChunkGLA(torch.autograd.Function):
    """Chunked GLA on [B, T, H, D] tensors (forward scan); gcum = chunk-local cumulative log-gates."""

    @staticmethod
    def forward(ctx, q, k, v, log_decay, scale, initial_state, output_final_state, chunk_size):
        scalar_gate = log_decay is None or log_decay.dim() == 3
        acc_t = _numerics(q.dtype)[0]
        if log_decay is None:
            gcum = q.new_zeros(q.shape[:3], dtype=acc_t)
        else:
            gcum = _chunk_local_cumsum(log_decay, chunk_size, acc_t)
        h0 = initial_state.contiguous() if initial_state is not None else None
        h, ht = _state_scan(k, v, gcum, h0, 1.0, chunk_size, False, acc_t if output_final_state else None, scalar_gate)
        A = _intra_scores(q, k, gcum, scale, chunk_size, scalar_gate)
        o = _outputs(q, v, gcum, h, A, scale, chunk_size, scalar_gate)
        del h  # recomputed in backward (memory)
        ctx.save_for_backward(q, k, v, gcum, h0, A, ht)
        ctx.meta = (scale, chunk_size, scalar_gate, log_decay is not None,
                    None if log_decay is None else log_decay.dtype,
                    None if initial_state is None else initial_state.dtype)
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gcum, h0, A, ht = ctx.saved_tensors
        scale, chunk_size, scalar_gate, has_gate, gate_dtype, h0_dtype = ctx.meta
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        h, _ = _state_scan(k, v, gcum, h0, 1.0, chunk_size, False, None, scalar_gate)
        need_dh0 = h0 is not None and ctx.needs_input_grad[5]
        dh, dh0 = _state_scan(q, do, gcum, dht, scale, chunk_size, True, h0_dtype if need_dh0 else None, scalar_gate)
        dA = _intra_dscores(do, v, scale, chunk_size)
        dv = _dv(k, gcum, A, do, dh, chunk_size, scalar_gate)
        dq, dk = _dqk(q, k, v, gcum, h, dh, do, dA, scale, chunk_size, scalar_gate)
        dlog_decay = None
        if has_gate and ctx.needs_input_grad[3]:
            dlog_decay = _dgate(q, k, dq, dk, ht, dht, chunk_size, scalar_gate, gate_dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dlog_decay, None, dh0, None, None


def gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay_k: Optional[torch.Tensor],
    scale: float,
    initial_state: Optional[torch.Tensor],
    output_final_state: bool,
    reverse: bool,
    chunk_size: int,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention with the chunked Triton kernels (inputs validated by `gla`).

    q, k [B, T, H, Dk]; v [B, T, H, Dv]; log_decay_k None | [B, T, H] | [B, T, H, Dk] (natural log, <= 0);
    initial_state None | [B, H, Dk, Dv]. Returns (o [B, T, H, Dv] in q's dtype, final_state
    [B, H, Dk, Dv] in float32 (float64 for float64 inputs) or None unless output_final_state).
    reverse=True scans from the end: implemented by flipping along T around the forward scan.
    """
    _check_chunk_size(chunk_size)
    if not q.is_cuda and not _interpreting():
        raise ValueError(
            f"gla_triton got q on device {q.device}; the triton backend needs CUDA tensors "
            "(CPU tensors run only under TRITON_INTERPRET=1, set before the kernels are imported)"
        )
    if q.dtype == torch.float64 and not _interpreting():
        # compiled kernels take `scale` as a float32 scalar: fold it into q to keep float64 exact
        q, scale = q * scale, 1.0
    if reverse:
        q, k, v = (x.flip(1) for x in (q, k, v))
        log_decay_k = None if log_decay_k is None else log_decay_k.flip(1)
    q, k, v = (x.contiguous() for x in (q, k, v))
    if log_decay_k is not None:
        log_decay_k = log_decay_k.contiguous()
    o, final_state = _ChunkGLA.apply(q, k, v, log_decay_k, float(scale), initial_state, bool(output_final_state), int(chunk_size))
    if reverse:
        o = o.flip(1)
    return o, (final_state if output_final_state else None)
