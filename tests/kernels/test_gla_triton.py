"""Tests of the chunked Triton GLA kernels (kernels/gla/triton_chunk.py) against a float64 token loop.

On CPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py) on tiny shapes, in
float64 (tolerance: relative error <= 1e-10) and float32 (<= 1e-5); where CUDA is available the
same tests run the compiled kernels on the GPU. The `gpu` tests add bf16 against the float32
oracle (relative RMS error <= 1e-2).
"""
from __future__ import annotations

import pytest
import torch

from seqmodels.kernels.gla.triton_chunk import gla_triton
from seqmodels.testing import assert_rel_close, rel_rms_err

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the Triton interpreter


def reference_gla(q, k, v, log_decay_k, scale, initial_state, reverse):
    """TEST ORACLE (float64 token loop): S_t = diag(e^{g_t}) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    reverse=True scans from the last token to the first. Returns (o, final state).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros((B, H, K, V), dtype=torch.float64) if initial_state is None else initial_state.double()
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if log_decay_k is not None:
            g = log_decay_k[:, t].double()
            g = g[..., None].expand(B, H, K) if g.dim() == 2 else g
            S = S * g.exp()[..., None]
        S = S + k[:, t].double()[..., None] * v[:, t].double()[:, :, None, :]
        outs[t] = scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t].double())
    return torch.stack(outs, dim=1), S


def make_inputs(dtype, gate, B=1, T=40, H=2, K=5, V=3, strength=5.0, device=DEVICE, seed=0):
    """Random q, k, v, log-decay (uniform in [-strength, 0]) and initial state."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
    if gate is None:
        g = None
    else:
        shape = (B, T, H) if gate == "scalar" else (B, T, H, K)
        g = -strength * torch.rand(*shape, generator=gen, dtype=torch.float64)
    h0 = rnd(B, H, K, V)
    cast = lambda x: None if x is None else x.to(device=device, dtype=dtype)
    return cast(q), cast(k), cast(v), cast(g), h0.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)


GATES = [None, "scalar", "channel"]


@pytest.mark.parametrize("dtype,reverse", [(torch.float32, True)])  # other combos: in the gradient tests
@pytest.mark.parametrize("gate", GATES)
def test_forward_matches_token_loop(dtype, gate, reverse):
    # T=40 with chunk 32: second chunk partial; odd dims K=5, V=3; gates down to -5 per step
    q, k, v, g, h0 = make_inputs(dtype, gate)
    o, ht = gla_triton(q, k, v, g, 0.7, h0, True, reverse, 32)
    ro, rS = reference_gla(q, k, v, g, 0.7, h0, reverse)
    assert o.dtype == dtype and ht.dtype == dtype
    assert_rel_close(o, ro, TOL[dtype], "output")
    assert_rel_close(ht, rS, TOL[dtype], "final state")


@pytest.mark.parametrize("gate", GATES)
def test_forward_chunk16_pow2_dims_no_state(gate):
    # chunk 16 = one sub-chunk per chunk; T=20 not a multiple; Dk=8, Dv=4; no initial/final state
    q, k, v, g, _ = make_inputs(torch.float64, gate, T=20, K=8, V=4)
    o, ht = gla_triton(q, k, v, g, 8 ** -0.5, None, False, False, 16)
    ro, _ = reference_gla(q, k, v, g, 8 ** -0.5, None, False)
    assert ht is None
    assert_rel_close(o, ro, 1e-10, "output")


def test_forward_very_strong_gates_stay_finite():
    # log-decay -30 per step: the cumulative gate reaches -960 in a chunk of 32 (e^{+960} would overflow)
    q, k, v, g, h0 = make_inputs(torch.float32, "channel", strength=30.0)
    o, ht = gla_triton(q, k, v, g, 1.0, h0, True, False, 32)
    ro, rS = reference_gla(q, k, v, g, 1.0, h0, False)
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    assert_rel_close(o, ro, 1e-5, "output")


def _grads(fn, inputs, weights):
    """Gradients of sum(o * w_o) + sum(S_T * w_S) w.r.t. the given inputs (None entries skipped)."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    o, ht = fn(*leaves)
    loss = (o * weights[0].to(device=o.device, dtype=o.dtype)).sum()
    if ht is not None and weights[1] is not None:
        loss = loss + (ht * weights[1].to(device=ht.device, dtype=ht.dtype)).sum()
    loss.backward()
    return [None if x is None else x.grad for x in leaves] + [o.detach(), None if ht is None else ht.detach()]


def _check_grads(dtype, gate, reverse, T, K, V, chunk_size, with_state, strength=5.0, B=1, H=2):
    q, k, v, g, h0 = make_inputs(dtype, gate, B=B, T=T, H=H, K=K, V=V, strength=strength)
    h0 = h0 if with_state else None
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(q.shape[:3] + (V,), generator=gen, dtype=torch.float64)
    w_s = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) if with_state else None
    ours = _grads(lambda q, k, v, g, h0: gla_triton(q, k, v, g, 0.7, h0, with_state, reverse, chunk_size),
                  (q, k, v, g, h0), (w_o, w_s))

    def reference(q, k, v, g, h0):
        o, final_state = reference_gla(q, k, v, g, 0.7, h0, reverse)
        return o, (final_state if with_state else None)

    ref = _grads(reference, tuple(None if x is None else x.double() for x in (q, k, v, g, h0)), (w_o, w_s))
    for name, a, b in zip(("dq", "dk", "dv", "dlog_decay_k", "dinitial_state", "o", "final_state"), ours, ref):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == (q.dtype if name not in ("dinitial_state", "final_state") else h0.dtype), name
            assert_rel_close(a, b, TOL[dtype], name)


@pytest.mark.parametrize("dtype,reverse", [(torch.float64, False), (torch.float64, True), (torch.float32, False)])
@pytest.mark.parametrize("gate", GATES)
def test_gradients_match_token_loop(dtype, gate, reverse):
    # o, final state, dq, dk, dv, d log_decay_k (incl. the final-state term), d initial_state;
    # T=40 with chunk 32 (second chunk partial), K=5, V=3, gates down to -5 per step
    _check_grads(dtype, gate, reverse, T=40, K=5, V=3, chunk_size=32, with_state=True)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_gradients_chunk16_without_states(gate):
    # several chunks (T=37, chunk 16), no initial / final state, Dk=8, Dv=4
    _check_grads(torch.float64, gate, False, T=37, K=8, V=4, chunk_size=16, with_state=False)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
@pytest.mark.parametrize("T", [1, 17])
def test_batch_and_sequences_shorter_than_a_chunk(gate, T):
    # B=2, H=2 (batch/head offsets), T=1 (one partial chunk) and T=17 (a 1-token second chunk), chunk 16
    _check_grads(torch.float64, gate, False, T=T, K=5, V=3, chunk_size=16, with_state=True, B=2, H=2)


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_several_dk_dv_tiles(monkeypatch, gate):
    # tiles capped at 16 so Dk=20, Dv=18 span two partial tiles each (loops and grid axes over Dk / Dv blocks)
    import seqmodels.kernels.gla.triton_chunk as tc

    real = tc._block
    monkeypatch.setattr(tc, "_block", lambda n, cap=64: real(n, 16))
    _check_grads(torch.float64, gate, False, T=20, K=20, V=18, chunk_size=16, with_state=True)


def test_gradients_very_strong_gates_stay_finite():
    _check_grads(torch.float32, "channel", False, T=40, K=5, V=3, chunk_size=32, with_state=True, strength=30.0)


def test_gradient_through_final_state_only():
    # the output is unused: the backward gets no output gradient, only dL/dS_T
    q, k, v, g, h0 = make_inputs(torch.float64, "channel", T=20)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    _, ht = gla_triton(*leaves[:4], 1.0, leaves[4], True, False, 16)
    ht.pow(2).sum().backward()
    ref = [x.clone().requires_grad_() for x in (q, k, v, g, h0)]
    reference_gla(*ref[:4], 1.0, ref[4], False)[1].pow(2).sum().backward()
    assert ref[0].grad is None and torch.equal(leaves[0].grad, torch.zeros_like(q))  # q does not reach S_T
    for a, b in zip(leaves[1:], ref[1:]):
        assert_rel_close(a.grad, b.grad, 1e-10, "gradient via final state")


@pytest.mark.parametrize("chunk_size", [8, 24])
def test_bad_chunk_size_raises(chunk_size):
    q, k, v, g, _ = make_inputs(torch.float32, None, T=8)
    with pytest.raises(ValueError, match="chunk_size"):
        gla_triton(q, k, v, g, 1.0, None, False, False, chunk_size)


@pytest.mark.skipif(DEVICE == "cuda", reason="interpreter-only variant; on CUDA the gpu tests run real bf16")
@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_bf16_storage_path_in_interpreter(monkeypatch, gate):
    # bf16 inputs, bf16 chunk states and bf16 outputs, with float32 matmul operands (the interpreter's bf16
    # arithmetic is wrong, so only the matmul dtype differs from the GPU): relative RMS error <= 1e-2
    import triton.language as tl

    import seqmodels.kernels.gla.triton_chunk as tc

    real = tc._numerics
    monkeypatch.setattr(tc, "_numerics", lambda dt: (torch.float32, tl.float32, tl.float32, "ieee")
                        if dt == torch.bfloat16 else real(dt))
    q, k, v, g, h0 = make_inputs(torch.bfloat16, gate, strength=1.0)
    gen = torch.Generator().manual_seed(1)
    w_o, w_s = torch.randn(v.shape, generator=gen), torch.randn(h0.shape, generator=gen)
    ours = _grads(lambda q, k, v, g, h0: gla_triton(q, k, v, g, 0.5, h0, True, False, 32), (q, k, v, g, h0), (w_o, w_s))
    ref = _grads(lambda q, k, v, g, h0: reference_gla(q, k, v, g, 0.5, h0, False),
                 tuple(None if x is None else x.double() for x in (q, k, v, g, h0)), (w_o, w_s))
    o, ht = gla_triton(q, k, v, g, 0.5, h0, True, False, 32)
    ro, rS = reference_gla(q, k, v, g, 0.5, h0, False)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    assert rel_rms_err(o, ro) <= 1e-2 and rel_rms_err(ht, rS) <= 1e-2
    for name, a, b in zip(("dq", "dk", "dv", "dlog_decay_k", "dinitial_state"), ours, ref):
        if b is not None:
            assert a.dtype == (torch.float32 if name == "dinitial_state" else torch.bfloat16), name
            assert rel_rms_err(a, b) <= 1e-2, name


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, g, _ = make_inputs(torch.float32, None, T=8, device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        gla_triton(q, k, v, g, 1.0, None, False, False, 16)


# ---------------------------------------------------------------- GPU (compiled Triton, bf16)
# Gates uniform in [-0.1, 0] per step: the range real models use (GLA: logsigmoid(.)/16, RetNet ~ -0.03);
# strong gates are covered exactly by the float32/float64 tests above.
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_bf16_forward_close_to_float32(gate, reverse):
    q, k, v, g, h0 = make_inputs(torch.bfloat16, gate, B=2, T=300, H=3, K=64, V=48, strength=0.1, device="cuda")
    o, ht = gla_triton(q, k, v, g, 64 ** -0.5, h0, True, reverse, 64)
    ro, rS = reference_gla(*(None if x is None else x.float().cpu() for x in (q, k, v, g)), 64 ** -0.5, h0.cpu(), reverse)
    assert rel_rms_err(o.float().cpu(), ro) <= 1e-2
    assert rel_rms_err(ht.float().cpu(), rS) <= 1e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("gate", GATES)
def test_gpu_bf16_gradients_close_to_float32(gate):
    q, k, v, g, h0 = make_inputs(torch.bfloat16, gate, B=2, T=300, H=3, K=64, V=48, strength=0.1, device="cuda")
    gen = torch.Generator().manual_seed(1)
    w_o = torch.randn(q.shape[:3] + (48,), generator=gen)
    w_s = torch.randn(h0.shape, generator=gen)
    ours = _grads(lambda q, k, v, g, h0: gla_triton(q, k, v, g, 64 ** -0.5, h0, True, False, 64),
                  (q, k, v, g, h0), (w_o, w_s))
    ref = _grads(lambda q, k, v, g, h0: reference_gla(q, k, v, g, 64 ** -0.5, h0, False),
                 tuple(None if x is None else x.float().cpu() for x in (q, k, v, g, h0)), (w_o, w_s))
    for name, a, b in zip(("dq", "dk", "dv", "dlog_decay_k", "dinitial_state"), ours, ref):
        if b is not None:
            assert rel_rms_err(a.float().cpu(), b) <= 1e-2, name


# ---------------------------------------------------------------- sm_90 compile check without a GPU
_COMPILE_ALL = r'''
import os, sys
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
import seqmodels.kernels.gla.triton_chunk as m

dt = sys.argv[1]
P = "*" + dt
ACCP = "*fp64" if dt == "fp64" else "*fp32"
HP = P if dt in ("bf16", "fp16") else ACCP
ACC = tl.float64 if dt == "fp64" else tl.float32
DOT = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32, "fp64": tl.float64}[dt]
PREC = None if dt in ("bf16", "fp16") else "ieee"
num = dict(ACC=ACC, DOT=DOT, PREC=PREC)

def comp(fn, sig, consts):
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=2))

for D in (1, 96):
    comp(m._chunk_cumsum_kernel, dict(g=P, gcum=ACCP, T="i32"), dict(H=4, D=D, BT=64, BD=64, ACC=ACC))
for scalar in (True, False):
    c = dict(num, H=4, K=96, V=80, BT=64, BK=64, BV=64, SCALAR_GATE=scalar)
    for reverse in (False, True):
        comp(m._state_scan_kernel, dict(x=P, y=P, gcum=ACCP, out=HP, init=ACCP, final=ACCP, scale="fp32", T="i32",
                                        NT="i32"), dict(c, REVERSE=reverse, HAS_INIT=True, STORE_FINAL=True))
    comp(m._intra_scores_kernel, dict(q=P, k=P, gcum=ACCP, A=ACCP, scale="fp32", T="i32"),
         dict(num, H=4, K=96, BT=64, BC=64 if scalar else 16, BK=64, SCALAR_GATE=scalar))
    comp(m._output_fwd_kernel, dict(q=P, v=P, gcum=ACCP, h=HP, A=ACCP, o=P, scale="fp32", T="i32", NT="i32"), c)
    comp(m._dv_kernel, dict(k=P, gcum=ACCP, A=ACCP, do=P, dh=HP, dv=P, T="i32", NT="i32"), c)
    comp(m._dqk_kernel, dict(q=P, k=P, v=P, gcum=ACCP, h=HP, dh=HP, do=P, dA=ACCP, dq=ACCP, dk=ACCP, scale="fp32",
                             T="i32", NT="i32"), dict(c, BC=64 if scalar else 16))
    comp(m._dgate_kernel, dict(q=P, k=P, dq=ACCP, dk=ACCP, dg=P, carry0=ACCP, T="i32", NT="i32"),
         dict(H=4, K=96, BT=64, BK=64, SCALAR_GATE=scalar, HAS_CARRY=True, ACC=ACC))
comp(m._intra_dscores_kernel, dict(do=P, v=P, dA=ACCP, scale="fp32", T="i32"), dict(num, H=4, V=80, BT=64, BV=64))
print("compiled")
'''


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp64"])
def test_kernels_compile_for_sm90_without_gpu(dtype):
    # Catches errors the interpreter accepts but the compiler rejects (types, layouts), with no GPU needed.
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, "-P", "-c", _COMPILE_ALL, dtype], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]
