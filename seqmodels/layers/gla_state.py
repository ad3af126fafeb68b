"""Decoding state and `gla` calls shared by the mixers built on the gla op (DESIGN §3.2, §5.12).

RetNet, Lightning, GLA and LightNet keep one matrix state per head, S [B, H, Dk, Dv], plus the
number of tokens consumed (the rotary / LRPE offset of the next token). `run_gla` is the chunked
(or naive, per `cfg.kernel_backend`) training form that continues from a state S; `step_gla` is
the one-token recurrent form on a GLAState.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from seqmodels.kernels.gla import gla, gla_step


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernel keeps states in float32 (float64 for float64 models)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class GLAState:
    """kv: S [B, H, Dk, Dv] (float32/float64); position: tokens consumed so far."""

    kv: torch.Tensor
    position: int = 0


def zero_gla_state(batch_size: int, heads: int, dk: int, dv: int, device, dtype) -> GLAState:
    return GLAState(torch.zeros(batch_size, heads, dk, dv, device=device, dtype=state_dtype(dtype)), 0)


def run_gla(cfg, q, k, v, log_decay_k, scale, initial_kv: Optional[torch.Tensor], return_state: bool, reverse: bool = False):
    """gla over [B, T, H, D] inputs from `initial_kv` (None = zeros) with the config's backend and chunk size.

    Returns (o [B, T, H, Dv], final S [B, H, Dk, Dv] | None unless return_state).
    """
    return gla(
        q, k, v, log_decay_k=log_decay_k, scale=scale, initial_state=initial_kv,
        output_final_state=return_state, reverse=reverse,
        chunk_size=cfg.chunk_size, backend=cfg.kernel_backend,
    )


def step_gla(q_t, k_t, v_t, log_decay_k, scale, state: GLAState):
    """One token: q_t, k_t [B, H, Dk], v_t [B, H, Dv], log_decay_k None | [B, H] | [B, H, Dk]."""
    o_t, kv = gla_step(q_t, k_t, v_t, log_decay_k=log_decay_k, state=state.kv, scale=scale)
    return o_t, GLAState(kv, state.position + 1)
