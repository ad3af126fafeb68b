"""Gate exactly 0 (log-decay -inf) as valid input.

exp(-inf) = 0 is a legal gate (the state is reset), but the chunked and closed forms subtract
cumulative log-decays, and (-inf) - (-inf) is NaN. `finite_log_decay` raises every log-decay to a
floor whose exponential is already exactly 0 in the compute dtype (e^-120 underflows float32 and
bfloat16, e^-800 underflows float64), so every backend computes the same outputs as with -inf,
with finite gradients (the clamp passes a zero gradient below the floor, the derivative of e^x
at -inf). Within a chunk the floor adds |floor| to cumulative sums: float32 rounding of the later
differences grows to about 120 * 6e-8 = 7e-6, and only after a gate that is exactly (or
numerically) 0.
"""
from __future__ import annotations

from typing import Optional

import torch

LOG_DECAY_FLOOR = {torch.float64: -800.0}
DEFAULT_LOG_DECAY_FLOOR = -120.0


def finite_log_decay(log_decay: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """`log_decay` with values below the dtype's floor (-inf included) raised to it; None stays None."""
    if log_decay is None:
        return None
    return log_decay.clamp(min=LOG_DECAY_FLOOR.get(log_decay.dtype, DEFAULT_LOG_DECAY_FLOOR))
