"""Decoding / continuation state of the Titans neural memory (matrix memory).

memory              M_t      [B, H, Dk, Dv]  weights after the last token
momentum            S_t      [B, H, Dk, Dv]  surprise (Eq. 14)
chunk_start_memory  M_{t'}   [B, H, Dk, Dv]  weights at the start of the current mini-batch, at which
                                             every gradient of that mini-batch is taken (Eqs. 16-18)
seen_in_chunk       int      tokens already seen in the current mini-batch, 0 <= seen_in_chunk < b
When seen_in_chunk == 0 the next token starts a new mini-batch and chunk_start_memory is refreshed from
memory. All batch entries advance in lockstep. Tensors are float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NeuralMemoryState:
    memory: torch.Tensor
    momentum: torch.Tensor
    chunk_start_memory: torch.Tensor
    seen_in_chunk: int = 0

    @classmethod
    def zeros(cls, batch: int, heads: int, dk: int, dv: int, dtype=torch.float32, device=None) -> "NeuralMemoryState":
        z = torch.zeros(batch, heads, dk, dv, dtype=dtype, device=device)
        return cls(z, z.clone(), z.clone(), 0)

    @classmethod
    def from_memory(cls, memory: torch.Tensor) -> "NeuralMemoryState":
        """Start of a sequence with weights `memory` [B, H, Dk, Dv] (e.g. a learned M_0) and zero momentum."""
        return cls(memory, torch.zeros_like(memory), memory, 0)
