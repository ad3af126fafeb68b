"""ssm_conv (sum of damped complex exponentials per channel): the definition (naive) == FFT ==
token recurrence, outputs, final states and gradients, float64 at relative error <= 1e-10; the
kernel equals the impulse response; float32 phases at long lags; input checks."""
import pytest
import torch

from seqmodels.kernels.ssm_conv import ssm_conv, ssm_conv_step, ssm_kernel
from seqmodels.testing import assert_rel_close

TOL64 = 1e-10
B, T, D, N = 2, 23, 3, 4


def params(seed=0, real=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    log_rate = torch.randn(D, N, generator=g, dtype=torch.float64) - 1.5  # rates e^ρ from ~0.02 to ~1
    frequency = torch.zeros(D, N, dtype=torch.float64) if real else torch.rand(D, N, generator=g, dtype=torch.float64) * 3
    coeff = torch.randn(D, N, 2, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (log_rate, frequency, coeff))


def inputs(seed=1, dtype=torch.float64, time=T):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, time, D, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(B, D, N, 2, generator=g, dtype=torch.float64).to(dtype))


@pytest.mark.parametrize("real", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_three_forms_agree_with_gradients(real, with_state):
    base = [t.clone().requires_grad_(True) for t in (*params(real=real), *inputs())]

    def run(backend):
        log_rate, frequency, coeff, x, h0 = base
        y, h = ssm_conv(x, log_rate, frequency, coeff, h0 if with_state else None, True, backend=backend)
        loss = (y * torch.linspace(-1, 1, T, dtype=y.dtype)[None, :, None]).sum() + (h * 0.3).sum()
        grads = torch.autograd.grad(loss, [t for i, t in enumerate(base) if with_state or i != 4])
        return y.detach(), h.detach(), grads

    ref_y, ref_h, ref_g = run("naive")
    for backend in ("fft", "recurrent"):
        y, h, grads = run(backend)
        assert_rel_close(y, ref_y, TOL64, f"{backend} output")
        assert_rel_close(h, ref_h, TOL64, f"{backend} final state")
        for i, (a, b) in enumerate(zip(grads, ref_g)):
            assert_rel_close(a, b, TOL64, f"{backend} gradient {i}")


def test_prefill_in_pieces_then_steps_equals_one_pass():
    log_rate, frequency, coeff = params()
    x, _ = inputs()
    full, _ = ssm_conv(x, log_rate, frequency, coeff)
    outs, h, start = [], None, 0
    for size in (1, 7, 5):
        y, h = ssm_conv(x[:, start:start + size], log_rate, frequency, coeff, h, True)
        outs.append(y)
        start += size
    for t in range(start, T):
        y_t, h = ssm_conv_step(x[:, t], log_rate, frequency, coeff, h)
        outs.append(y_t[:, None])
    assert_rel_close(torch.cat(outs, 1), full, TOL64, "pieces + steps vs one pass")


def test_kernel_is_the_impulse_response_and_decays():
    log_rate, frequency, coeff = params()
    impulse = torch.zeros(1, 40, D, dtype=torch.float64)
    impulse[:, 0] = 1.0
    y, _ = ssm_conv(impulse, log_rate, frequency, coeff, backend="recurrent")
    assert_rel_close(ssm_kernel(log_rate, frequency, coeff, 40), y[0].T, TOL64, "kernel vs impulse response")
    late = ssm_kernel(log_rate, frequency, coeff, 5, start=10_000).abs().max()
    assert late < 1e-6 * y.abs().max()  # |λ| < 1 for every parameter value


def test_float32_long_lags_keep_the_phase():
    # a slow pole (rate 1e-4) with ω = 1: at lags ~ 60k a float32 phase l·ω would be off by ~1e-2 rad
    log_rate = torch.full((1, 1), -9.2, dtype=torch.float64)
    frequency = torch.ones(1, 1, dtype=torch.float64)
    coeff = torch.tensor([[[1.0, 0.5]]], dtype=torch.float64)
    ref = ssm_kernel(log_rate, frequency, coeff, 16, start=60_000)
    k32 = ssm_kernel(*(t.float() for t in (log_rate, frequency, coeff)), 16, start=60_000)
    assert (k32.double() - ref).abs().max() < 1e-5 * ref.abs().max() + 1e-7


def test_float32_forms_agree():
    p32 = params(dtype=torch.float32)
    x, h0 = inputs(dtype=torch.float32)
    y_fft, h_fft = ssm_conv(x, *p32, h0, True, backend="fft")
    y_rec, h_rec = ssm_conv(x, *p32, h0, True, backend="recurrent")
    assert y_fft.dtype == torch.float32
    assert_rel_close(y_fft, y_rec, 1e-5, "float32 fft vs recurrent")
    assert_rel_close(h_fft, h_rec, 1e-5, "float32 final state")


def test_bad_inputs_raise():
    log_rate, frequency, coeff = params()
    x, h0 = inputs()
    with pytest.raises(ValueError, match=r"coeff has shape \(3, 4\)"):
        ssm_conv(x, log_rate, frequency, coeff[..., 0])
    with pytest.raises(ValueError, match=r"initial_state has shape \(2, 3, 5, 2\)"):
        ssm_conv(x, log_rate, frequency, coeff, torch.zeros(2, 3, 5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"backend must be one of"):
        ssm_conv(x, log_rate, frequency, coeff, backend="triton")
