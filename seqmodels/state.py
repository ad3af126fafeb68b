"""Decoding-state containers.

The model's state is a `ModelState`: one entry per layer, each whatever that layer's mixer
returns from `init_state` (a tensor, a small dataclass or a dict of tensors). Softmax
attention's entry is a `KVCache`, which grows with the tokens seen; every other family's
entry has a size independent of T.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from seqmodels.kernels.attention import KVCache, WindowCache, ChunkCache  # noqa: F401  (decoding caches)


@dataclass
class ModelState:
    """Per-layer mixer states plus the number of tokens consumed."""

    layers: list
    seen_tokens: int = 0

    def nbytes(self) -> int:
        return state_nbytes(self.layers)


def state_nbytes(obj: Any) -> int:
    """Bytes held by all tensors inside a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(state_nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0
