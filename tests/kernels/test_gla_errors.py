"""gla / gla_step input checks: each bad input raises ValueError naming the argument, its shape or value, and the expectation."""
import pytest
import torch

from seqmodels.kernels.gla import gla, gla_step

B, T, H, DK, DV = 2, 10, 3, 4, 5


def inputs(**overrides):
    x = dict(q=torch.randn(B, T, H, DK), k=torch.randn(B, T, H, DK), v=torch.randn(B, T, H, DV),
             log_decay_k=-torch.rand(B, T, H, DK), log_decay_v=-torch.rand(B, T, H, DV),
             initial_state=torch.randn(B, H, DK, DV))
    x.update(overrides)
    return x


BAD = {
    "q rank": (dict(q=torch.randn(B, T, H * DK)), r"q has shape \(2, 10, 12\).*expected rank 4"),
    "k heads": (dict(k=torch.randn(B, T, H + 1, DK)), r"k has shape \(2, 10, 4, 4\).*H=3"),
    "k dim": (dict(k=torch.randn(B, T, H, DK + 1)), r"k has shape .*Dk=4"),
    "v time": (dict(v=torch.randn(B, T + 1, H, DV)), r"v has shape \(2, 11, 3, 5\).*T=10"),
    "v batch": (dict(v=torch.randn(B + 1, T, H, DV)), r"v has shape \(3, 10, 3, 5\).*B=2"),
    "log_decay_k rank": (dict(log_decay_k=-torch.rand(B, T)), r"log_decay_k has shape \(2, 10\); expected \[B, T, H\].*\[B, T, H, Dk\]"),
    "log_decay_k dim": (dict(log_decay_k=-torch.rand(B, T, H, DK + 2)), r"log_decay_k has shape \(2, 10, 3, 6\).*Dk=4"),
    "log_decay_v dim": (dict(log_decay_v=-torch.rand(B, T, H, DK)), r"log_decay_v has shape \(2, 10, 3, 4\).*Dv=5"),
    "initial_state": (dict(initial_state=torch.randn(B, H, DV, DK)), r"initial_state has shape \(2, 3, 5, 4\).*Dk=4"),
    "dtype": (dict(v=torch.randn(B, T, H, DV, dtype=torch.float64)), r"v has dtype torch.float64 but q has dtype torch.float32"),
    "integer": (dict(k=torch.ones(B, T, H, DK, dtype=torch.int64)), r"k must be a floating-point tensor"),
    "positive log_decay_k": (dict(log_decay_k=torch.full((B, T, H), 0.5)), r"log_decay_k has a positive value \(0.5\)"),
    "positive log_decay_v": (dict(log_decay_v=torch.full((B, T, H, DV), 0.25)), r"log_decay_v has a positive value"),
    "nan log_decay_k": (dict(log_decay_k=torch.full((B, T, H), float("nan"))), r"log_decay_k contains NaN"),
    "empty time": (dict(q=torch.randn(B, 0, H, DK), k=torch.randn(B, 0, H, DK), v=torch.randn(B, 0, H, DV),
                        log_decay_k=None, log_decay_v=None), r"q has shape \(2, 0, 3, 4\).*T >= 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tensor_raises(case):
    overrides, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        gla(**inputs(**overrides))


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True])
def test_bad_chunk_size_raises(chunk_size):
    with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer, got {chunk_size!r}"):
        gla(**inputs(), chunk_size=chunk_size)


def test_bad_backend_and_scale_raise():
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'cuda'"):
        gla(**inputs(), backend="cuda")
    with pytest.raises(ValueError, match=r"scale must be a float or None"):
        gla(**inputs(), scale=torch.tensor(1.0))


def test_device_mismatch_raises():
    with pytest.raises(ValueError, match=r"v is on meta but q is on cpu"):
        gla(**inputs(v=torch.empty(B, T, H, DV, device="meta")))


def test_fla_backend_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        gla(**inputs(log_decay_v=None), backend="fla")


def test_initial_state_may_be_float32_with_float64_inputs():
    x = {n: t.double() for n, t in inputs().items()}
    x["initial_state"] = x["initial_state"].float()
    o, s = gla(**x, output_final_state=True)
    assert o.dtype == torch.float64 and s.dtype == torch.float64


def test_step_checks_shapes_and_gates():
    q, v = torch.randn(B, H, DK), torch.randn(B, H, DV)
    with pytest.raises(ValueError, match=r"state has shape \(2, 3, 4, 4\).*Dv=5"):
        gla_step(q, q, v, None, None, torch.randn(B, H, DK, DK), None)
    with pytest.raises(ValueError, match=r"log_decay_k has a positive value"):
        gla_step(q, q, v, torch.ones(B, H), None, None, None)
    with pytest.raises(ValueError, match=r"v has shape \(2, 4, 5\).*H=3"):
        gla_step(q, q, torch.randn(B, H + 1, DV))
