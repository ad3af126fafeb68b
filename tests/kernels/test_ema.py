"""ema (Mega EMA): FFT == chunked == token loop == steps, with initial state, gradients, float32, input checks."""
import pytest
import torch

from seqmodels.kernels.ema import ema, ema_step
from seqmodels.testing import assert_rel_close, rel_rms_err


def _inputs(B=2, T=21, D=3, N=4, dtype=torch.float64, seed=0, strong=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    p = torch.sigmoid(torch.randn(D, N, generator=g, dtype=dtype))
    a = torch.sigmoid(torch.randn(D, N, generator=g, dtype=dtype) + (6 if strong else 0))
    log_q = torch.log1p(-p * a)
    beta = torch.randn(D, N, generator=g, dtype=dtype)
    gamma = torch.randn(D, N, generator=g, dtype=dtype)
    h0 = torch.randn(B, D, N, generator=g, dtype=dtype)
    return x, p, log_q, beta, gamma, h0


def test_naive_matches_scalar_recurrence():
    x, p, log_q, beta, gamma, h0 = _inputs(B=1, T=5, D=1, N=2)
    y, h = ema(x, p, log_q, beta, gamma, h0, output_final_state=True, backend="naive")
    q = torch.exp(log_q)  # = 1 - p·a
    state = h0[0, 0].clone()
    for t in range(5):
        state = p[0] * beta[0] * x[0, t, 0] + q[0] * state
        assert abs(y[0, t, 0] - (gamma[0] * state).sum() / 2 ** 0.5) < 1e-13
    assert_rel_close(h[0, 0], state, 1e-14)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_fft_chunk_naive_steps_agree(with_state, strong, chunk_size):
    x, p, log_q, beta, gamma, h0 = _inputs(strong=strong)
    h0 = h0 if with_state else None
    y_ref, h_ref = ema(x, p, log_q, beta, gamma, h0, output_final_state=True, backend="naive")
    for backend in ("fft", "chunk"):
        y, h = ema(x, p, log_q, beta, gamma, h0, output_final_state=True, chunk_size=chunk_size, backend=backend)
        assert_rel_close(y, y_ref, 1e-10, f"{backend} y")
        assert_rel_close(h, h_ref, 1e-10, f"{backend} h")
    state, ys = h0, []
    for t in range(x.shape[1]):
        y_t, state = ema_step(x[:, t], p, log_q, beta, gamma, state)
        ys.append(y_t)
    assert_rel_close(torch.stack(ys, 1), y_ref, 1e-10, "steps")
    assert_rel_close(state, h_ref, 1e-10, "step state")


@pytest.mark.parametrize("split", [1, 8])
def test_prefill_continuation(split):
    x, p, log_q, beta, gamma, _ = _inputs(T=17)
    y_full, h_full = ema(x, p, log_q, beta, gamma, output_final_state=True)
    y1, h = ema(x[:, :split], p, log_q, beta, gamma, output_final_state=True)
    y2, h2 = ema(x[:, split:], p, log_q, beta, gamma, initial_state=h, output_final_state=True, backend="chunk", chunk_size=3)
    assert_rel_close(torch.cat([y1, y2], 1), y_full, 1e-10)
    assert_rel_close(h2, h_full, 1e-10)


def test_float32():
    x, p, log_q, beta, gamma, h0 = _inputs(T=50)
    y_ref, h_ref = ema(x, p, log_q, beta, gamma, h0, output_final_state=True, backend="naive")
    args = [t.float() for t in (x, p, log_q, beta, gamma, h0)]
    for backend in ("fft", "chunk"):
        y, h = ema(*args[:5], args[5], output_final_state=True, backend=backend, chunk_size=16)
        assert y.dtype == torch.float32 and h.dtype == torch.float32
        assert_rel_close(y, y_ref, 1e-5, f"float32 {backend}")  # float32 tolerance 1e-5
        assert_rel_close(h, h_ref, 1e-5, f"float32 {backend} state")


def test_bfloat16_input_float32_parameters():
    x, p, log_q, beta, gamma, _ = _inputs(T=40)
    y_ref, _ = ema(x, p, log_q, beta, gamma, backend="naive")
    for backend in ("fft", "chunk", "naive"):
        y, _ = ema(x.bfloat16(), p.float(), log_q.float(), beta.float(), gamma.float(), backend=backend)
        assert y.dtype == torch.bfloat16
        assert rel_rms_err(y, y_ref) < 1e-2, backend  # bf16 tolerance: relative RMS 1e-2


def test_gradients_agree():
    base = _inputs(T=13)
    grads = {}
    for backend in ("naive", "fft", "chunk"):
        leaves = [t.clone().requires_grad_() for t in base]
        y, h = ema(*leaves[:5], leaves[5], output_final_state=True, backend=backend, chunk_size=5)
        (y.sin().sum() + h.square().sum()).backward()
        grads[backend] = [t.grad for t in leaves]
    for backend in ("fft", "chunk"):
        for name, a, b in zip("x p log_q beta gamma h0".split(), grads[backend], grads["naive"]):
            assert_rel_close(a, b, 1e-10, f"{backend} grad {name}")


def test_bad_inputs():
    x, p, log_q, beta, gamma, h0 = _inputs()
    with pytest.raises(ValueError, match="x has shape"):
        ema(x[0], p, log_q, beta, gamma)
    with pytest.raises(ValueError, match="beta has shape"):
        ema(x, p, log_q, beta[:, :2], gamma)
    with pytest.raises(ValueError, match="gamma has shape"):
        ema(x, p, log_q, beta, gamma[:2])
    with pytest.raises(ValueError, match="log_q has a positive value"):
        ema(x, p, -log_q, beta, gamma)
    with pytest.raises(ValueError, match="p has values outside"):
        ema(x, p + 1, log_q, beta, gamma)
    with pytest.raises(ValueError, match="initial_state has shape"):
        ema(x, p, log_q, beta, gamma, h0[:, :, :3])
    with pytest.raises(ValueError, match="chunk_size"):
        ema(x, p, log_q, beta, gamma, chunk_size=0)
    with pytest.raises(ValueError, match="dtype"):
        ema(x, p.float(), log_q, beta, gamma)  # parameters disagree among themselves
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        ema(x.long(), p, log_q, beta, gamma)
    with pytest.raises(ValueError, match="backend"):
        ema(x, p, log_q, beta, gamma, backend="scan")
    with pytest.raises(ValueError, match="state has shape"):
        ema_step(x[:, 0], p, log_q, beta, gamma, h0[:1])
