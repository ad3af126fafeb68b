"""Optional score terms shared by every form of `attention` (naive, SDPA, local blocks, decoding step).

bias         additive, broadcastable to [B, H, T, S] over the main keys (Mega's relative position bias)
prefix_k/v   [B, P, Hkv, D] / [B, P, Hkv, Dv]: always-visible tokens (Titans persistent memory, Eq. 19)
sink_logits  [H, m]: value-less logits in the softmax denominator (Lizard meta-memory, attention sinks)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass(frozen=True)
class Extras:
    bias: Optional[torch.Tensor] = None
    prefix_k: Optional[torch.Tensor] = None
    prefix_v: Optional[torch.Tensor] = None
    sink_logits: Optional[torch.Tensor] = None

    def with_bias(self, bias: Optional[torch.Tensor]) -> "Extras":
        return replace(self, bias=bias)
