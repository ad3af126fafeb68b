"""Comparison helpers for equivalence tests (forms of one op or layer computing the same function)."""
from __future__ import annotations

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are zero)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    diff = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= tol, f"{what or 'tensors'} differ: relative error {err:.3e} > {tol:.1e}"


def rel_rms_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """sqrt(mean (a-e)^2) / sqrt(mean e^2): the metric for bf16 checks."""
    a, e = actual.double(), expected.double()
    denom = e.pow(2).mean().sqrt().item()
    num = (a - e).pow(2).mean().sqrt().item()
    return num / denom if denom > 0 else num
