"""short_conv: F.conv1d form == tap loop == token-by-token step, continuation from a tail, input checks."""
import pytest
import torch

from seqmodels.kernels.short_conv import short_conv, short_conv_naive, short_conv_step
from seqmodels.testing import assert_rel_close


def _inputs(B=2, T=13, D=5, K=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    w = torch.randn(D, K, generator=g, dtype=dtype)
    b = torch.randn(D, generator=g, dtype=dtype)
    s0 = torch.randn(B, K - 1, D, generator=g, dtype=dtype)
    return x, w, b, s0


def test_naive_matches_closed_form_definition():
    # K=2, D=1: y_t = w0 x_t + w1 x_{t-1} + b, with x_{-1} from the initial tail
    x = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=torch.float64)
    w = torch.tensor([[10.0, 100.0]], dtype=torch.float64)
    b = torch.tensor([0.5], dtype=torch.float64)
    s0 = torch.tensor([[[7.0]]], dtype=torch.float64)
    y = short_conv_naive(x, w, b, s0)
    expected = torch.tensor([[[10 + 700 + 0.5], [20 + 100 + 0.5], [30 + 200 + 0.5]]], dtype=torch.float64)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("with_state", [False, True])
def test_conv1d_equals_naive_and_steps(K, with_state):
    x, w, b, s0 = _inputs(K=K)
    s0 = s0 if with_state else None
    ref = short_conv_naive(x, w, b, s0)
    y, final = short_conv(x, w, b, initial_state=s0, output_final_state=True)
    assert_rel_close(y, ref, 1e-12, "conv1d vs naive")
    tail = s0
    for t in range(x.shape[1]):
        y_t, tail = short_conv_step(x[:, t], w, b, tail)
        assert_rel_close(y_t, ref[:, t], 1e-12, f"step {t}")
    assert tail.shape == (x.shape[0], K - 1, x.shape[2])
    assert torch.equal(tail, final)  # the step keeps exactly the last K-1 inputs
    y_n, final_n = short_conv(x, w, b, initial_state=s0, output_final_state=True, backend="naive")
    assert_rel_close(y_n, ref, 0)
    assert torch.equal(final_n, final)


@pytest.mark.parametrize("split", [1, 2, 7])
def test_prefill_continuation(split):
    x, w, b, _ = _inputs(K=5, T=11)
    full, _ = short_conv(x, w, b)
    y1, s = short_conv(x[:, :split], w, b, output_final_state=True)  # split may be < K-1
    y2, _ = short_conv(x[:, split:], w, b, initial_state=s)
    assert_rel_close(torch.cat([y1, y2], 1), full, 1e-12, "continuation")


def test_float32_and_gradients():
    x, w, b, s0 = _inputs(dtype=torch.float64, K=3)
    args = [t.clone().requires_grad_() for t in (x, w, b, s0)]
    ref = short_conv_naive(*args)
    ref.pow(2).sum().backward()
    g_ref = [a.grad for a in args]
    args2 = [t.clone().requires_grad_() for t in (x, w, b, s0)]
    y, _ = short_conv(*args2[:3], initial_state=args2[3])
    y.pow(2).sum().backward()
    for a, g in zip(args2, g_ref):
        assert_rel_close(a.grad, g, 1e-12, "grad")
    y32, _ = short_conv(x.float(), w.float(), b.float(), initial_state=s0.float())
    assert_rel_close(y32, ref.detach(), 1e-5, "float32")  # float32 tolerance 1e-5


def test_bad_inputs():
    x, w, b, s0 = _inputs(K=3)
    with pytest.raises(ValueError, match="x has shape"):
        short_conv(x[0], w)
    with pytest.raises(ValueError, match="weight has shape"):
        short_conv(x, torch.randn(5, 9, dtype=x.dtype))
    with pytest.raises(ValueError, match="weight has shape"):
        short_conv(x, w[:4])
    with pytest.raises(ValueError, match="bias has shape"):
        short_conv(x, w, b[:3])
    with pytest.raises(ValueError, match="initial_state has shape"):
        short_conv(x, w, b, initial_state=s0[:, :1])
    with pytest.raises(ValueError, match="dtype"):
        short_conv(x, w.float())
    with pytest.raises(ValueError, match="backend"):
        short_conv(x, w, backend="cuda")
    with pytest.raises(ValueError, match="tail has shape"):
        short_conv_step(x[:, 0], w, b, s0[:1])
    with pytest.raises(ValueError, match="x_t has shape"):
        short_conv_step(x, w, b, s0)
