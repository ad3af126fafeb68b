"""Decoding-state containers.

The model's state is a `ModelState`: one entry per layer, each whatever that layer's mixer
returns from `init_state` (a tensor, a small dataclass or a dict of tensors). Softmax
attention's entry is a `KVCache`, which grows with the tokens seen; every other family's
entry has a size independent of T. Every tensor in a state is batch-first ([B, ...]), so
`index_select` picks, reorders or repeats sequences (beam search's `reorder_cache`).
"""
from __future__ import annotations

import copy
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

    @property
    def batch_size(self) -> int:
        sizes = {t.shape[0] for t in _tensors(self.layers)}
        if len(sizes) != 1:
            raise ValueError(f"state tensors disagree on the batch size: {sorted(sizes)}")
        return sizes.pop()

    def index_select(self, index) -> "ModelState":
        """A state holding sequences `index` [N] (long: any order, repeats allowed; or a bool mask [B])."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (self.batch_size,):
                raise ValueError(f"a boolean index has shape {tuple(index.shape)}; expected [{self.batch_size}]")
            index = index.nonzero()[:, 0]
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"index must be a 1-d integer or boolean tensor, got shape {tuple(index.shape)} {index.dtype}")
        batch = self.batch_size
        if index.numel() and (int(index.min()) < -batch or int(index.max()) >= batch):
            raise ValueError(f"index holds rows [{int(index.min())}, {int(index.max())}] but the state has {batch} sequences")
        return ModelState(_select_rows(self.layers, index.long()), self.seen_tokens)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """In place: row i becomes row beam_idx[i] (Hugging Face's Cache API, used by beam search)."""
        self.layers = self.index_select(beam_idx).layers


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _select_rows(obj: Any, index: torch.Tensor) -> Any:
    """`obj` with every tensor t replaced by t[index] (a copy; the original is left as it was)."""
    if isinstance(obj, torch.Tensor):
        return obj.index_select(0, index.to(obj.device))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        new = copy.copy(obj)
        for f in dataclasses.fields(obj):
            object.__setattr__(new, f.name, _select_rows(getattr(obj, f.name), index))
        return new
    if isinstance(obj, dict):
        return {k: _select_rows(v, index) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_select_rows(v, index) for v in obj)
    return obj


def state_nbytes(obj: Any) -> int:
    """Bytes held by all tensors inside a (nested) state."""
    return sum(t.numel() * t.element_size() for t in _tensors(obj))
