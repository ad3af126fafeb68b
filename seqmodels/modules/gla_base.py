"""The base of the mixers built on the `gla` op (docs/architecture.md §3.2, §4.5): RetNet, Lightning, GLA,
LightNet, ViG.

`GLAMixer` holds the bias-free q, k, v projections split into heads (`head_dims()` gives Dk, Dv;
the config's by default) and the decoding state `GLAState`: one matrix S [B, H, Dk, Dv] per
head plus the number of tokens consumed and the leading pads per row (the rotary / LRPE position
of the next token is seen_tokens - pad_offset). `mask_pads` makes pads invisible: k = v = 0 and
log_decay = 0 there, so S is neither written nor decayed.
`gla_layer` is the chunked (or naive, per `cfg.kernel_backend`) training form continuing from S;
`gla_layer_step` is the one-token recurrent form on a GLAState.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.gla import gla, gla_step
from seqmodels.layers.base import Mixer
from seqmodels.modules.padding import current_pad_offset, keep_state_at_pads, zero_pads


@dataclass
class GLAState:
    """kv: S [B, H, Dk, Dv] (float32/float64); seen_tokens: tokens consumed so far; pad_offset: None or
    [B] leading pads per row of a left-padded prefill (seqmodels/modules/padding.py)."""

    kv: torch.Tensor
    seen_tokens: int = 0
    pad_offset: Optional[torch.Tensor] = None


def mask_pads(pad_mask, k, v, log_decay):
    """k, v [B, T, H, *] set to 0 and log_decay (None | [B, T, H, *]) to 0 at pads: S skips them."""
    if pad_mask is None:
        return k, v, log_decay
    return zero_pads(k, pad_mask), zero_pads(v, pad_mask), keep_state_at_pads(log_decay, pad_mask)


def next_gla_state(kv, state: Optional[GLAState], time: int, pad_mask) -> GLAState:
    """The GLAState after a forward of `time` tokens from `state` (None = empty) with `pad_mask`."""
    if state is None:
        return GLAState(kv, time, current_pad_offset(None, pad_mask))
    return GLAState(kv, state.seen_tokens + time, current_pad_offset(state.pad_offset, pad_mask))


def gla_layer(cfg, q, k, v, log_decay_k, scale, initial_kv: Optional[torch.Tensor], return_state: bool, reverse: bool = False):
    """gla over [B, T, H, D] inputs from `initial_kv` (None = zeros) with the config's backend and chunk size.

    Returns (o [B, T, H, Dv], final S [B, H, Dk, Dv] | None unless return_state).
    """
    return gla(
        q, k, v, log_decay_k=log_decay_k, scale=scale, initial_state=initial_kv,
        output_final_state=return_state, reverse=reverse,
        chunk_size=cfg.chunk_size, backend=cfg.kernel_backend,
    )


def gla_layer_step(q_t, k_t, v_t, log_decay_k, scale, state: GLAState):
    """One token: q_t, k_t [B, H, Dk], v_t [B, H, Dv], log_decay_k None | [B, H] | [B, H, Dk]."""
    o_t, kv = gla_step(q_t, k_t, v_t, log_decay_k=log_decay_k, state=state.kv, scale=scale)
    return o_t, GLAState(kv, state.seen_tokens + 1, state.pad_offset)


def expanded_head_dims(cfg, options, family: str):
    """(Dk, Dv) = (expand_k·d / H, expand_v·d / H); ValueError when not integral or when the config's
    explicit head_dim_k / head_dim_v disagree."""
    dims = []
    for which, expand, explicit in (("k", options.expand_k, cfg.head_dim_k), ("v", options.expand_v, cfg.head_dim_v)):
        width = expand * cfg.d_model
        if width != int(width) or int(width) % cfg.n_heads or int(width) < cfg.n_heads:
            raise ValueError(
                f"{family}: expand_{which}={expand} gives width {width:g} for d_model={cfg.d_model}, which must be a "
                f"positive integer multiple of n_heads={cfg.n_heads}"
            )
        head_dim = int(width) // cfg.n_heads
        if explicit is not None and explicit != head_dim:
            raise ValueError(
                f"{family}: head_dim_{which}={explicit} does not match expand_{which}={expand} "
                f"(d_model {cfg.d_model} / {cfg.n_heads} heads -> {head_dim}); leave head_dim_{which} unset"
            )
        dims.append(head_dim)
    return tuple(dims)


class GLAMixer(Mixer):
    """q_proj, k_proj [d -> H·Dk], v_proj [d -> H·Dv] (no bias) and a GLAState of S [B, H, state_dk, Dv]."""

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.n_heads = cfg.n_heads
        self.dk, self.dv = self.head_dims()
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.dk, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_heads * self.dk, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_heads * self.dv, bias=False)

    def head_dims(self) -> tuple[int, int]:
        return self.cfg.dk, self.cfg.dv

    @property
    def state_dk(self) -> int:
        """Key width of S (LRPE doubles it)."""
        return self.dk

    def split_heads(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """[..., H·dim] -> [..., H, dim]."""
        return t.view(t.shape[:-1] + (self.n_heads, dim))

    def init_state(self, batch_size, device=None, dtype=None) -> GLAState:
        dtype = compute_dtype(dtype or torch.float32)
        return GLAState(torch.zeros(batch_size, self.n_heads, self.state_dk, self.dv, device=device, dtype=dtype), 0)
