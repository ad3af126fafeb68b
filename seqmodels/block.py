"""Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)) (docs/architecture.md §4.2).

A mixer with `residual_in_mixer = True` (its paper wires its own residual, e.g. Mega's gated
residual) receives the raw residual stream and its output replaces it.
"""
from __future__ import annotations

from torch import nn

from seqmodels.layers.registry import get_mixer
from seqmodels.modules.mlp import build_mlp
from seqmodels.modules.norm import build_norm


class Block(nn.Module):
    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.mixer = get_mixer(cfg.mixer_for_layer(layer_idx))(cfg, layer_idx)
        self.mixer_norm = None if self.mixer.residual_in_mixer else build_norm(cfg)
        self.mlp = build_mlp(cfg)
        self.mlp_norm = build_norm(cfg) if self.mlp is not None else None

    def _mix(self, x, mixed):
        x = mixed if self.mixer_norm is None else x + mixed
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    def forward(self, x, state=None, return_state=False, pad_mask=None):
        h = x if self.mixer_norm is None else self.mixer_norm(x)
        mixed, state = self.mixer(h, state=state, return_state=return_state, pad_mask=pad_mask)
        return self._mix(x, mixed), state

    def step(self, x_t, state):
        h = x_t if self.mixer_norm is None else self.mixer_norm(x_t)
        mixed, state = self.mixer.step(h, state)
        return self._mix(x_t, mixed), state
