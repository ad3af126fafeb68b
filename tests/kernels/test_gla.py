"""gla: naive (masked T×T) == chunked == token loop, values and gradients; properties of the op.

Tolerances (docs/architecture.md §8): float64 relative error <= 1e-10 (max|a-b| / max|b|), float32 <= 1e-5
against the float64 oracle. Shapes: T not a multiple of the chunk, Dk != Dv, odd dims, gates down
to -5 per step.
"""
import itertools
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import seqmodels.kernels.gla as gla_module
from seqmodels.kernels.gla import gla, gla_chunk, gla_naive, gla_recurrent, gla_step
from seqmodels.testing import assert_rel_close, rel_rms_err

F64_TOL = 1e-10
F32_TOL = 1e-5


def make_inputs(key_decay="channel", value_decay=False, initial_state=False, B=2, T=37, H=3, Dk=7, Dv=5,
                dtype=torch.float64, seed=0):
    """Random q, k, v and gates in [-5, 0] (many near 0, some strong); key_decay: None|'head'|'channel'."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    gate = lambda *shape: -5 * torch.rand(*shape, generator=g, dtype=torch.float64) ** 2  # noqa: E731
    q, k, v = rand(B, T, H, Dk), rand(B, T, H, Dk), rand(B, T, H, Dv)
    gk = {None: None, "head": gate(B, T, H), "channel": gate(B, T, H, Dk)}[key_decay]
    gv = gate(B, T, H, Dv) if value_decay else None
    s0 = rand(B, H, Dk, Dv) if initial_state else None
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return dict(q=cast(q), k=cast(k), v=cast(v), log_decay_k=cast(gk), log_decay_v=cast(gv), initial_state=s0)


CASES = list(itertools.product([None, "head", "channel"], [False, True], [False, True], [False, True]))
CASE_IDS = [f"gk={kd}-gv={vd}-s0={s0}-rev={rev}" for kd, vd, s0, rev in CASES]


@pytest.mark.parametrize("key_decay,value_decay,init,reverse", CASES, ids=CASE_IDS)
def test_forms_agree_float64(key_decay, value_decay, init, reverse):
    x = make_inputs(key_decay, value_decay, init)
    o_ref, s_ref = gla_naive(**x, output_final_state=True, reverse=reverse)
    o_rec, s_rec = gla_recurrent(**x, output_final_state=True, reverse=reverse)
    assert_rel_close(o_rec, o_ref, F64_TOL, "recurrent output")
    assert_rel_close(s_rec, s_ref, F64_TOL, "recurrent final state")
    for chunk, sub in [(16, 4), (16, 16), (8, 3), (64, 16)]:  # sub 3 -> divisor 2; T=37 < 64: one padded chunk
        o, s = gla_chunk(**x, output_final_state=True, reverse=reverse, chunk_size=chunk, sub_chunk_size=sub)
        assert_rel_close(o, o_ref, F64_TOL, f"chunk {chunk}/{sub} output")
        assert_rel_close(s, s_ref, F64_TOL, f"chunk {chunk}/{sub} final state")
    o, s = gla(**x, output_final_state=True, reverse=reverse, chunk_size=16, backend="torch")
    assert_rel_close(o, o_ref, F64_TOL, "gla(backend='torch')")


@pytest.mark.parametrize("key_decay,value_decay", [("head", False), ("channel", False), ("channel", True)])
def test_forms_agree_float32(key_decay, value_decay):
    x64 = make_inputs(key_decay, value_decay, initial_state=True, T=50)
    o_ref, s_ref = gla_naive(**x64, output_final_state=True)
    x32 = {n: (None if t is None else t.float()) for n, t in x64.items()}
    for form in (lambda: gla(**x32, output_final_state=True, chunk_size=16),
                 lambda: gla_recurrent(**x32, output_final_state=True)):
        o, s = form()
        assert o.dtype == torch.float32 and s.dtype == torch.float32
        assert_rel_close(o, o_ref, F32_TOL, "float32 output")
        assert_rel_close(s, s_ref, F32_TOL, "float32 final state")


def test_bfloat16_inputs_keep_float32_state():
    """Accumulation and state in float32, output in the input dtype (docs/architecture.md §3.2); bf16 rel RMS <= 1e-2."""
    x64 = make_inputs("channel", T=40)
    o_ref, s_ref = gla_naive(**x64, output_final_state=True)
    xb = {n: (None if t is None else t.bfloat16()) for n, t in x64.items()}
    o, s = gla(**xb, output_final_state=True, chunk_size=16)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_rms_err(o, o_ref) <= 1e-2 and rel_rms_err(s, s_ref) <= 1e-2


def test_strong_gates_stay_finite():
    """Gates of -30 per step: any e^{-b} factorization would overflow to inf/nan in float32."""
    x64 = make_inputs("channel", value_decay=True, T=40)
    x64["log_decay_k"] = x64["log_decay_k"] * 6
    x64["log_decay_v"] = x64["log_decay_v"] * 6
    o_ref, _ = gla_naive(**x64)
    o, _ = gla(**{n: (None if t is None else t.float()) for n, t in x64.items()}, chunk_size=16)
    assert torch.isfinite(o).all()
    assert_rel_close(o, o_ref, F32_TOL, "float32 output with -30/step gates")


def test_step_matches_full_sequence():
    x = make_inputs("channel", value_decay=True, initial_state=True, T=9)
    o_ref, s_ref = gla_naive(**x, output_final_state=True)
    state = x["initial_state"]
    for t in range(9):
        o_t, state = gla_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["log_decay_k"][:, t],
                              x["log_decay_v"][:, t], state, None)
        assert_rel_close(o_t, o_ref[:, t], F64_TOL, f"step {t}")
    assert_rel_close(state, s_ref, F64_TOL, "state after the last step")


@pytest.mark.parametrize("reverse", [False, True])
def test_two_calls_continue_one_call(reverse):
    """Running T in two calls, the second starting from the first's final state, equals one call."""
    x = make_inputs("channel", value_decay=True, initial_state=True, T=50)
    o_ref, s_ref = gla(**x, output_final_state=True, reverse=reverse, chunk_size=16)
    cut = 23
    early, late = (slice(cut, None), slice(None, cut)) if reverse else (slice(None, cut), slice(cut, None))
    seq = [n for n, t in x.items() if n != "initial_state" and t is not None]
    first = dict({n: x[n][:, early] for n in seq}, initial_state=x["initial_state"])
    second = {n: x[n][:, late] for n in seq}
    o1, s1 = gla(**first, output_final_state=True, reverse=reverse, chunk_size=16)
    o2, s2 = gla(**second, initial_state=s1, output_final_state=True, reverse=reverse, chunk_size=16)
    o = torch.cat([o2, o1] if reverse else [o1, o2], dim=1)
    assert_rel_close(o, o_ref, F64_TOL, "continued output")
    assert_rel_close(s2, s_ref, F64_TOL, "continued final state")


def test_ones_column_gives_linear_attention_normalizer():
    """o_t = Σ_{s≤t} φ(q_t)·φ(k_s) v_s / Σ_{s≤t} φ(q_t)·φ(k_s) from one gla call on [v, 1] (docs/architecture.md §3.2)."""
    x = make_inputs(None, T=30)
    phi = lambda t: torch.nn.functional.elu(t) + 1  # noqa: E731  (Katharopoulos et al. 2020, Eq. 7)
    fq, fk, v = phi(x["q"]), phi(x["k"]), x["v"]
    o_aug, _ = gla(fq, fk, torch.cat([v, torch.ones_like(v[..., :1])], dim=-1), scale=1.0, chunk_size=8)
    o = o_aug[..., :-1] / o_aug[..., -1:]
    weights = torch.einsum("bthd,bshd->bhts", fq, fk).tril()
    closed = torch.einsum("bhts,bshd->bthd", weights / weights.sum(-1, keepdim=True), v)
    assert_rel_close(o, closed, F64_TOL, "normalized linear attention")


class _LargestTensor(TorchDispatchMode):
    """Records the largest numel produced by any op while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("value_decay", [False, True])
def test_chunked_never_builds_txt(monkeypatch, value_decay):
    """Forward and backward of the chunked form at T=2048: no tensor reaches T*T elements; naive is never called."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the chunked backend called the naive form")

    monkeypatch.setattr(gla_module, "gla_naive", forbidden)
    x = make_inputs("channel", value_decay, B=1, T=2048, H=1, Dk=4, Dv=4, dtype=torch.float32)
    for t in x.values():
        if t is not None:
            t.requires_grad_(True)
    with _LargestTensor() as probe:
        o, _ = gla(**x, chunk_size=64, backend="torch")
        o.sum().backward()
    T = 2048
    assert probe.largest < T * T // 8, f"largest intermediate has {probe.largest} elements (T*T = {T * T})"


GRAD_CASES = [("channel", True, True, False), ("channel", True, True, True), ("channel", False, True, False),
              ("head", True, False, True), ("head", False, True, False), (None, False, False, False)]


@pytest.mark.parametrize("key_decay,value_decay,init,reverse", GRAD_CASES)
def test_gradients_naive_vs_chunked(key_decay, value_decay, init, reverse):
    x = make_inputs(key_decay, value_decay, init, T=37)
    g = torch.Generator().manual_seed(1)
    o_weight = torch.randn(2, 37, 3, 5, generator=g, dtype=torch.float64)
    s_weight = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)

    def grads(fn, **kw):
        inputs = {n: (None if t is None else t.clone().requires_grad_(True)) for n, t in x.items()}
        o, s = fn(**inputs, output_final_state=True, reverse=reverse, **kw)
        ((o * o_weight).sum() + (s * s_weight).sum()).backward()
        return {n: t.grad for n, t in inputs.items() if t is not None}

    ref = grads(gla_naive)
    got = grads(gla_chunk, chunk_size=16, sub_chunk_size=4)
    for name, grad in ref.items():
        assert_rel_close(got[name], grad, F64_TOL, f"d loss / d {name}")


@pytest.mark.parametrize("max_span", [0.0, 10.0, 1e9], ids=["all-entrywise", "mixed", "all-factorized"])
def test_diagonal_block_paths_agree(monkeypatch, max_span):
    """Sub-chunk diagonal blocks: factorized through the block start where the decay span is small,
    entry by entry where it exceeds MAX_DIAGONAL_SPAN; forced to each path (and a mix) they give the
    same values and gradients (float64: the factorized path fits e^{80} here)."""
    import seqmodels.kernels.gla.chunk as chunk_module

    monkeypatch.setattr(chunk_module, "MAX_DIAGONAL_SPAN", max_span)
    x = make_inputs("channel", value_decay=True, initial_state=True, T=37)
    cum = x["log_decay_k"][:, :32].unflatten(1, (8, 4)).cumsum(2)  # sub-chunks of 4
    spans = -cum[:, :, -1].amin(-1)
    if max_span == 10.0:  # the mix really is a mix
        assert (spans > max_span).any() and (spans <= max_span).any()
    names = [n for n, t in x.items() if t is not None]

    def run(fn, **kw):
        inputs = {n: x[n].clone().requires_grad_(True) for n in names}
        o, s = fn(**inputs, output_final_state=True, **kw)
        (o.square().sum() + s.sum()).backward()
        return o, s, {n: t.grad for n, t in inputs.items()}

    o_ref, s_ref, g_ref = run(gla_naive)
    o, s, g = run(gla_chunk, chunk_size=16, sub_chunk_size=4)
    assert_rel_close(o, o_ref, F64_TOL, "output")
    assert_rel_close(s, s_ref, F64_TOL, "final state")
    for name in names:
        assert_rel_close(g[name], g_ref[name], F64_TOL, f"d loss / d {name}")


def test_gla_gates_float32_factorized_path():
    """GLA-like gates (logsigmoid(x)/16): every diagonal block takes the factorized path; float32 vs float64."""
    x64 = make_inputs("channel", value_decay=True, initial_state=True, T=70)
    g = torch.Generator().manual_seed(3)
    x64["log_decay_k"] = torch.nn.functional.logsigmoid(torch.randn(2, 70, 3, 7, generator=g, dtype=torch.float64)) / 16
    x64["log_decay_v"] = torch.nn.functional.logsigmoid(torch.randn(2, 70, 3, 5, generator=g, dtype=torch.float64)) / 16
    o_ref, s_ref = gla_naive(**x64, output_final_state=True)
    o, s = gla_chunk(**{n: t.float() for n, t in x64.items()}, output_final_state=True)
    assert_rel_close(o, o_ref, F32_TOL, "float32 output")
    assert_rel_close(s, s_ref, F32_TOL, "float32 final state")


def test_gradcheck_tiny():
    x = make_inputs("channel", value_decay=True, initial_state=True, B=1, T=6, H=1, Dk=3, Dv=2)
    x["log_decay_k"] = x["log_decay_k"] - 0.1  # stay < 0 under finite-difference steps
    x["log_decay_v"] = x["log_decay_v"] - 0.1
    names = list(x)
    inputs = [x[n].clone().requires_grad_(True) for n in names]

    def fn(*tensors):
        o, s = gla_chunk(**dict(zip(names, tensors)), output_final_state=True, chunk_size=4, sub_chunk_size=2)
        return o, s

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_backend_naive_and_auto_dispatch():
    x = make_inputs("head", T=20)
    o_ref, _ = gla_naive(**x)
    o, _ = gla(**x, backend="naive")
    assert torch.equal(o, o_ref)
    o_auto, _ = gla(**x, chunk_size=8)
    o_torch, _ = gla_chunk(**x, chunk_size=8)
    assert torch.equal(o_auto, o_torch)


def test_triton_with_value_decay_falls_back_once(monkeypatch, caplog):
    monkeypatch.setattr(gla_module, "_fallbacks_reported", set())
    x = make_inputs("channel", value_decay=True, T=20)
    o_ref, _ = gla_chunk(**x, chunk_size=8)
    with caplog.at_level(logging.WARNING, logger=gla_module.__name__):
        for _ in range(2):
            o, _ = gla(**x, chunk_size=8, backend="triton")
            assert torch.equal(o, o_ref)
    messages = [r.getMessage() for r in caplog.records if "log_decay_v" in r.getMessage()]
    assert len(messages) == 1, messages


@pytest.mark.parametrize("chunk_size", [8, 24, 48])
def test_triton_unsupported_chunk_size_falls_back_once(monkeypatch, caplog, chunk_size):
    # chunk sizes the Triton kernel cannot tile (< 16 or not a power of 2): the chunked PyTorch
    # backend serves them, bit for bit, and the log says so once however many calls follow
    monkeypatch.setattr(gla_module, "_fallbacks_reported", set())
    x = make_inputs("channel", initial_state=True, T=30)
    o_ref, s_ref = gla_chunk(**x, output_final_state=True, chunk_size=chunk_size)
    with caplog.at_level(logging.WARNING, logger=gla_module.__name__):
        for _ in range(3):
            o, s = gla(**x, output_final_state=True, chunk_size=chunk_size, backend="triton")
            assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    messages = [r.getMessage() for r in caplog.records if "chunk_size" in r.getMessage()]
    assert len(messages) == 1, messages
    assert f"got {chunk_size}" in messages[0] and "PyTorch backend" in messages[0]


def test_triton_cpu_without_interpreter_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(gla_module, "_fallbacks_reported", set())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = make_inputs("head", T=20)
    o_ref, _ = gla_chunk(**x, chunk_size=16)
    with caplog.at_level(logging.WARNING, logger=gla_module.__name__):
        o, _ = gla(**x, chunk_size=16, backend="triton")
    assert torch.equal(o, o_ref)
    assert sum("CUDA tensors" in r.getMessage() for r in caplog.records) == 1


def test_triton_supported_chunk_size_does_not_fall_back(monkeypatch, caplog):
    # a power-of-2 chunk on CPU under the interpreter (set by tests/conftest.py) runs the Triton
    # kernel itself, without a log, and agrees with the chunked backend to float64 round-off
    import seqmodels.kernels.gla.triton_chunk as triton_module
    calls = []
    real = triton_module.gla_triton
    monkeypatch.setattr(triton_module, "gla_triton", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(gla_module, "_fallbacks_reported", set())
    x = make_inputs("head", T=20, B=1, H=2)
    o_ref, _ = gla_chunk(**x, chunk_size=16)
    with caplog.at_level(logging.WARNING, logger=gla_module.__name__):
        o, _ = gla(**x, chunk_size=16, backend="triton")
    assert calls == [1] and not caplog.records
    assert_rel_close(o, o_ref, F64_TOL, "triton vs torch")


def test_triton_unavailable_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(gla_module, "_fallbacks_reported", set())
    monkeypatch.setitem(__import__("sys").modules, "seqmodels.kernels.gla.triton_chunk", None)  # import -> ImportError
    x = make_inputs("channel", T=20)
    o_ref, _ = gla_chunk(**x, chunk_size=8)
    with caplog.at_level(logging.WARNING, logger=gla_module.__name__):
        o, _ = gla(**x, chunk_size=8, backend="triton")
    assert torch.equal(o, o_ref)
    assert any("unavailable" in r.getMessage() for r in caplog.records)

