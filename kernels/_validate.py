"""Input checks shared by every public op: each failure names the tensor, its shape and what was expected."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

Dim = Optional[Union[int, str]]  # int: exact size; str: a named size that must agree across tensors; None: any


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[Dim], sizes: Optional[dict] = None) -> None:
    """Check `tensor` against `expected` (e.g. ("B", "T", "H", "Dk")).

    Named dims are bound in `sizes` on first sight and must agree afterwards, so mismatched
    batch/time/heads across tensors are reported with both tensors' shapes in mind.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    spec = "[" + ", ".join("*" if d is None else str(d) for d in expected) + "]"
    if tensor.dim() != len(expected):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} (rank {tensor.dim()}); expected rank {len(expected)}: {spec}")
    sizes = {} if sizes is None else sizes
    for axis, (want, got) in enumerate(zip(expected, tensor.shape)):
        if want is None:
            continue
        if isinstance(want, int):
            if got != want:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {spec} with size {want} at dim {axis}")
            continue
        bound = sizes.setdefault(want, got)
        if bound != got:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}; expected {spec} where {want}={bound} "
                f"(from an earlier argument), but dim {axis} is {got}"
            )


def check_same_device_dtype(named: dict) -> None:
    """All given tensors (None entries skipped) share one device and one floating dtype."""
    items = [(n, t) for n, t in named.items() if t is not None]
    if not items:
        return
    ref_name, ref = items[0]
    for n, t in items:
        if not t.is_floating_point():
            raise ValueError(f"{n} must be a floating-point tensor, got dtype {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{n} is on {t.device} but {ref_name} is on {ref.device}; move all inputs to one device")
    for n, t in items[1:]:
        if t.dtype != ref.dtype:
            raise ValueError(f"{n} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; cast inputs to one dtype")


def check_log_decay(name: str, log_decay: Optional[torch.Tensor]) -> None:
    """Log-space gates must be <= 0: a positive value means the gate parametrization is wrong."""
    if log_decay is None:
        return
    if torch.isnan(log_decay).any():
        raise ValueError(f"{name} contains NaN")
    worst = log_decay.max().item()
    if worst > 0:
        raise ValueError(
            f"{name} has a positive value ({worst:.3g}); log-decays must be <= 0 "
            "(parametrize gates as logsigmoid(...) or -softplus(...)), no clamping is done"
        )


def check_int(name: str, value, minimum: int = 1, maximum: Optional[int] = None) -> None:
    """`value` is an int (not a bool) in [minimum, maximum]; the one integer check of the package."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum and (maximum is None or value <= maximum):
        return
    if maximum is not None:
        wanted = f"an integer in [{minimum}, {maximum}]"
    else:
        wanted = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    raise ValueError(f"{name} must be {wanted}, got {value!r}")
