"""long_conv: FFT == direct == token steps (float64 1e-10, float32 1e-5), chunked continuation, gradients, input checks."""
import pytest
import torch

from seqmodels.kernels.long_conv import long_conv, long_conv_direct, long_conv_step
from seqmodels.testing import assert_rel_close


def _inputs(B=2, T=19, D=3, L=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    kern = torch.randn(D, L, generator=g, dtype=dtype) * torch.exp(-0.1 * torch.arange(L, dtype=dtype))
    s0 = torch.randn(B, L - 1, D, generator=g, dtype=dtype)
    return x, kern, s0


def test_direct_matches_a_scalar_loop():
    x, kern, s0 = _inputs(B=1, T=6, D=1, L=3)
    full = torch.cat([s0, x], 1)[0, :, 0]
    y = long_conv_direct(x, kern, s0)[0, :, 0]
    for t in range(6):
        assert abs(y[t] - sum(kern[0, l] * full[t + 2 - l] for l in range(3))) < 1e-13


@pytest.mark.parametrize("T,L", [(19, 7), (16, 16), (5, 12), (8, 1)])
@pytest.mark.parametrize("with_state", [False, True])
def test_fft_equals_direct_and_steps(T, L, with_state):
    x, kern, s0 = _inputs(T=T, L=L)
    s0 = s0 if with_state else None
    ref = long_conv_direct(x, kern, s0)
    y, tail = long_conv(x, kern, s0, output_final_state=True)
    assert_rel_close(y, ref, 1e-10, "fft vs direct")
    state = s0
    outs = []
    for t in range(T):
        y_t, state = long_conv_step(x[:, t], kern, state)
        outs.append(y_t)
    assert_rel_close(torch.stack(outs, 1), ref, 1e-10, "steps vs direct")
    assert torch.equal(state, tail)
    y_n, tail_n = long_conv(x, kern, s0, output_final_state=True, backend="naive")
    assert_rel_close(y_n, ref, 0)
    assert torch.equal(tail_n, tail)


def test_float32_with_state():
    x, kern, s0 = _inputs(T=64, L=40)
    ref = long_conv_direct(x, kern, s0)
    y, _ = long_conv(x.float(), kern.float(), s0.float())
    assert_rel_close(y, ref, 1e-5, "float32 fft")  # float32 tolerance 1e-5


@pytest.mark.parametrize("chunk", [1, 4, 9])
def test_chunked_continuation(chunk):
    x, kern, _ = _inputs(T=23, L=10)
    ref = long_conv_direct(x, kern)
    tail, outs = None, []
    for start in range(0, 23, chunk):
        y, tail = long_conv(x[:, start : start + chunk], kern, tail, output_final_state=True)
        outs.append(y)
    assert_rel_close(torch.cat(outs, 1), ref, 1e-10, "chunked")


def test_gradients_fft_vs_direct():
    x, kern, s0 = _inputs(T=12, L=9)
    grads = []
    for backend in ("naive", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, kern, s0)]
        y, tail = long_conv(*leaves, output_final_state=True, backend=backend)
        (y.sin().sum() + tail.square().sum()).backward()
        grads.append([t.grad for t in leaves])
    for name, a, b in zip(("x", "kernel", "initial_state"), grads[1], grads[0]):
        assert_rel_close(a, b, 1e-10, f"grad {name}")


def test_bad_inputs():
    x, kern, s0 = _inputs()
    with pytest.raises(ValueError, match="x has shape"):
        long_conv(x[0], kern)
    with pytest.raises(ValueError, match="kernel has shape"):
        long_conv(x, kern[:2])
    with pytest.raises(ValueError, match="at least one tap"):
        long_conv(x, kern[:, :0])
    with pytest.raises(ValueError, match="initial_state has shape"):
        long_conv(x, kern, s0[:, 1:])
    with pytest.raises(ValueError, match="dtype"):
        long_conv(x, kern.float())
    with pytest.raises(ValueError, match="backend"):
        long_conv(x, kern, backend="cuda")
    with pytest.raises(ValueError, match="tail has shape"):
        long_conv_step(x[:, 0], kern, s0[:, :2])
    with pytest.raises(ValueError, match="x_t has shape"):
        long_conv_step(x, kern)
