"""The mixer contract (docs/architecture.md §4.1) every token mixer implements.

    forward(x [B,T,d_model], state=None, return_state=False, pad_mask=None) -> (y [B,T,d_model], new_state | None)
        the parallel/chunked training form; `state` continues a prefill. pad_mask [B,T] bool (True at
        real tokens, left and/or right padding; seqmodels/modules/padding.py): the real tokens'
        outputs and the state equal the unpadded rows', or the mixer raises naming itself.
    step(x_t [B,d_model], state) -> (y_t [B,d_model], new_state)
        one token, O(1) in the tokens seen (softmax attention: its KV cache is the baseline's cost).
    init_state(batch_size, device, dtype) -> state   (the state before any token)

Class attributes: `causal` (False for bidirectional mixers, which have no `step`),
`Options` (a dataclass of per-family knobs, or None), `residual_in_mixer` (True when the
paper's block wiring, e.g. Mega's gated residual, lives inside the mixer: the block then
passes the raw residual stream and adds nothing), optional `check_config(cfg, options)`.
"""
from __future__ import annotations

from torch import nn


class Mixer(nn.Module):
    causal: bool = True
    Options = None
    residual_in_mixer: bool = False
    mixer_name: str = "?"

    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.options = cfg.options_for(self.mixer_name)

    def forward(self, x, state=None, return_state=False, pad_mask=None):  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, x_t, state):
        if not self.causal:
            raise ValueError(f"mixer '{self.mixer_name}' is bidirectional: it has no token-by-token step")
        raise NotImplementedError(f"mixer '{self.mixer_name}' does not implement step")

    def init_state(self, batch_size, device, dtype):
        raise NotImplementedError(f"mixer '{self.mixer_name}' does not implement init_state")
