"""Loading `.pt` files without running code from them.

`torch.load(weights_only=False)` unpickles arbitrary Python objects, and unpickling can call any
function the file names: a crafted checkpoint runs its payload on load. Every load of ours uses
`weights_only=True`: tensors, containers and numbers only, plus the few DeepSpeed classes its
optimizer checkpoints hold (ALLOWED_GLOBALS, plain data classes and enums). DeepSpeed's own
loaders (engine.load_checkpoint, zero_to_fp32) call `torch.load(weights_only=False)`;
`safe_unpickling()` routes those calls to the weights-only loader while DeepSpeed runs. A file
that needs anything else is refused with one line naming it; `trust=True` (the recipes'
`--trust-checkpoint`) restores pickle loading for checkpoints you wrote yourself.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from typing import Iterator

import torch

_TORCH_LOAD = torch.load  # the real loader, also while safe_unpickling() has replaced torch.load
TRUST_FLAG = "--trust-checkpoint"
TRUST_HINT = f"if you wrote this checkpoint yourself, pass {TRUST_FLAG} to load it with pickle"


class UnsafeCheckpointError(ValueError):
    """A file would need pickle (code execution) to load."""


def allowed_globals() -> list:
    """The non-tensor classes DeepSpeed's checkpoints hold (ZeRO 0-3, fp16/bf16 loss scalers)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _unsafe_names(path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: the load error itself is the news
        return "objects a weights-only load refuses"
    return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "") if names else "objects a weights-only load refuses"


def safe_torch_load(path: str | os.PathLike, map_location="cpu", **kwargs):
    """`torch.load(path, weights_only=True)` with ALLOWED_GLOBALS; a file that needs more raises
    UnsafeCheckpointError naming the file and what it holds."""
    kwargs.pop("weights_only", None)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return _TORCH_LOAD(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        if not isinstance(path, (str, os.PathLike)):
            raise UnsafeCheckpointError(f"refusing to unpickle a stream: {str(exc).splitlines()[0]}") from exc
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds {_unsafe_names(path)}, which could run code when unpickled; "
            f"{TRUST_HINT}"
        ) from exc


@contextlib.contextmanager
def safe_unpickling(trust: bool = False) -> Iterator[None]:
    """Inside the block every `torch.load` call (DeepSpeed's included) is weights-only (safe_torch_load);
    with `trust=True` nothing changes."""
    if trust:
        yield
        return
    original = torch.load

    def weights_only_load(f, map_location=None, *args, **kwargs):
        return safe_torch_load(f, map_location, *args, **kwargs)

    torch.load = weights_only_load
    try:
        yield
    finally:
        torch.load = original
