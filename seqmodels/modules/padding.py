"""Padded batches (docs/architecture.md §4.1, "Padding"): the `pad_mask` every mixer accepts.

pad_mask [B, T] bool, True at real tokens. A row is left-padded (pads before its first real
token: batched prompts for generation), right-padded (pads after its last real token: training
and evaluation batches) or both; its real tokens are one contiguous run. A mixer makes pads
invisible to the real tokens: no state write and no decay at pads (`gla` families), zero input
(convolutions, EMA), masked keys (attention). Positions (rotary, LRPE, AReLiT's tick) count each
row's real tokens: after a left-padded prefill a state carries `pad_offset` [B], the number of
leading pads per row, so the next token of row b sits at position seen_tokens - pad_offset[b].
"""
from __future__ import annotations

from typing import Optional, Union

import torch

Offset = Union[int, torch.Tensor]  # tokens seen: one int for the batch, or [B]


def leading_pads(pad_mask: torch.Tensor) -> torch.Tensor:
    """[B] long: pads before each row's first real token (T for a row of pads only)."""
    real = pad_mask.long()
    return torch.where(real.any(1), real.argmax(1), torch.full_like(real[:, 0], pad_mask.shape[1]))


def current_pad_offset(state_pad_offset: Optional[torch.Tensor], pad_mask: Optional[torch.Tensor]):
    """Leading pads per row for this call: from pad_mask (a first, padded chunk) or carried by the state."""
    return leading_pads(pad_mask) if pad_mask is not None else state_pad_offset


def token_positions(seen_tokens: int, time: int, pad_offset: Optional[torch.Tensor], device) -> torch.Tensor:
    """Positions of the next `time` tokens: [T] (no padding) or [B, T] = seen + t - pad_offset[b],
    clamped at 0 (a leading pad sits at position 0; its output is never read)."""
    steps = torch.arange(seen_tokens, seen_tokens + time, device=device)
    if pad_offset is None:
        return steps
    return (steps[None, :] - pad_offset[:, None]).clamp_min(0)


def real_before(pad_offset: Optional[torch.Tensor], first_column: int, columns: int, device) -> Optional[torch.Tensor]:
    """[B, columns] bool: which of the columns first_column.. are real tokens (column >= pad_offset[b]),
    or None without padding. For cached keys of a left-padded prefill."""
    if pad_offset is None:
        return None
    return torch.arange(first_column, first_column + columns, device=device)[None, :] >= pad_offset[:, None]


def key_mask_for(pad_offset: Optional[torch.Tensor], first_column: int, columns: int,
                 pad_mask: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    """[B, columns] bool over keys at columns first_column..: True at real tokens (leading pads from
    pad_offset; this call's pad_mask covers the last pad_mask.shape[1] columns), None when unpadded."""
    mask = real_before(pad_offset, first_column, columns, device)
    if pad_mask is None:
        return mask
    current = torch.cat([pad_mask.new_ones(pad_mask.shape[0], columns - pad_mask.shape[1]), pad_mask], dim=1)
    return current if mask is None else mask & current


def zero_pads(x: torch.Tensor, pad_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """x [B, T, ...] with every pad position set to 0 (x itself when pad_mask is None)."""
    if pad_mask is None:
        return x
    return x.masked_fill(~pad_mask.view(pad_mask.shape + (1,) * (x.dim() - 2)), 0.0)


def keep_state_at_pads(log_decay: Optional[torch.Tensor], pad_mask: Optional[torch.Tensor]):
    """A log-decay [B, T, ...] with 0 (no decay) at pads; None stays None."""
    if log_decay is None or pad_mask is None:
        return log_decay
    return zero_pads(log_decay, pad_mask)


def refuse_padding(family: str, pad_mask: Optional[torch.Tensor], why: str, left_only: bool = True) -> None:
    """ValueError for a family that cannot be exact with this padding (left padding only when `left_only`:
    right pads follow every real token and change nothing before them)."""
    if pad_mask is None:
        return
    padded = ~pad_mask[:, 0] if left_only else ~pad_mask.all(1)
    if bool(padded.any()):
        side = "left-padded" if left_only else "padded"
        raise ValueError(f"mixer '{family}': {side} batches {why}; use batch size 1 or prompts of equal length")


def check_model_pad_mask(attention_mask: Optional[torch.Tensor], input_ids: torch.Tensor, seen_tokens: int,
                         return_state: bool) -> Optional[torch.Tensor]:
    """Validate a model-level attention_mask [B, T] (1/True = real token) and return it as a bool pad_mask,
    or None when it marks every token real (the unpadded path)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask has shape {shape}; expected {tuple(input_ids.shape)} like input_ids (1 = real token, 0 = pad)")
    pad_mask = attention_mask.bool() if attention_mask.dtype != torch.bool else attention_mask
    if bool(pad_mask.all()):
        return None
    real = pad_mask.long()
    starts = (real[:, 1:] > real[:, :-1]).sum(1) + real[:, 0]  # runs of real tokens per row
    if bool((starts > 1).any()):
        row = int((starts > 1).nonzero()[0])
        raise ValueError(f"attention_mask row {row} has pads between real tokens; pad only before (left) or after (right) "
                         "each sequence")
    if seen_tokens > 0:
        raise ValueError("attention_mask has pads in a continuation chunk (the state has already seen tokens); "
                         "pad only the first chunk, on the left")
    if return_state and bool((~pad_mask[:, -1] & pad_mask.any(1)).any()):
        raise ValueError("a right-padded batch would leave pads at the end of the decoding state; left-pad prompts "
                         "for generation (tokenizer.padding_side = 'left') or do not ask for the state")
    return pad_mask
