"""Titans long-term memory as a layer (LMM): a matrix (or 2-layer MLP) memory that learns at test time.

Behrouz et al. 2024, "Titans: Learning to Memorize at Test Time", arXiv 2501.00663.
Per head, from the layer input x_t (§3.1, Eqs. 11-15; §4.4 architectural details):
    q_t, k_t, v_t = SiLU(ShortConv(x_t W_Q | x_t W_K | x_t W_V)),  q, k ← q/||q||, k/||k||
    θ_t = max_lr · σ(x_t w_θ),  η_t = σ(x_t w_η),  α_t = σ(x_t w_α)          (data-dependent, per head)
    S_t = η_t S_{t-1} − θ_t ∇ℓ(M_{t'}; k_t, v_t),  ℓ = ||M(k_t) − v_t||²       (Eqs. 12, 14, 16-18)
    M_t = (1 − α_t) M_{t-1} + S_t                                             (Eq. 13)
    y_t = M_t(q_t)                                                            (Eq. 15, read after the update)
    out = W_O (RMSNorm(y_t) ⊙ σ(x_t W_g))                                     (§4.4: norm + linear gate)
log η_t = logsigmoid(·) and log(1 − α_t) = logsigmoid(−·) are passed in log space to the
`neural_memory` op. t' is the start of t's mini-batch of b = `memory_chunk_size` tokens (the
paper's mini-batch form, §3.2 Eqs. 16-18: gradients at the mini-batch-start weights, momentum and forgetting per token; b is
part of the model, b = 1 is the token-by-token rule). Order of §4.4's pieces (the paper names them
but not their order): projection → depthwise causal conv (kernel `conv_size`) → SiLU → ℓ2-norm.

Persistent memory (Eq. 19): `n_persistent` learned tokens p_1..p_Np (d_model vectors) are prepended
to the memory's input, x̃ = [p ‖ x]. Our choice for LMM: the prefix runs through the same
projections, conv, gates and memory update as real tokens (so it sets M, S, the conv tail and the
mini-batch phase before token 0) and its outputs are dropped; because it does not depend on x,
`init_state` computes it once per call, and `forward(x)` without a state is exactly
`forward(x, init_state())`. The branch lives in seqmodels/modules/neural_memory_branch.py; MAG
(titans_mag.py) reuses it and also shows the prefix to its attention.

Memory: "matrix" M(k) = k M, M_0 = 0 (the op's chunked matmul form), or "mlp" M(k) = SiLU(k W1) W2
with learned initial weights (W1, W2) (the paper's preferred deep memory; the op runs it as a token
loop, so it is slow: for small models and probes).
Decoding state (TitansMemoryState): the conv tail [B, K-1, channels] and the memory state
(M, S, M_{t'}, seen_in_chunk) — constant in T.
Padding (decision, docs/architecture.md §4.1): right padding is exact (pads follow every real token);
left padding is refused: the mini-batch boundaries sit at absolute positions shared by the batch,
and even a pad that writes nothing changes M through the momentum carried from the persistent prefix.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.neural_memory_branch import (LEFT_PADDING_REFUSAL, NeuralMemoryBranch, TitansMemoryOptions,
                                                    TitansMemoryState)
from seqmodels.modules.padding import refuse_padding
from seqmodels.modules.norm import RMSNorm


@register_mixer("titans_memory")
class TitansMemory(Mixer):
    """Memory as a layer (LMM, §4.3's memory layer alone); see the module docstring."""

    Options = TitansMemoryOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.memory = NeuralMemoryBranch(cfg, self.options)
        H, Dv = cfg.n_heads, cfg.dv
        self.out_norm = RMSNorm(Dv, cfg.norm_eps)  # per head, learnable weight
        self.g_proj = nn.Linear(cfg.d_model, H * Dv, bias=False)
        self.o_proj = nn.Linear(H * Dv, cfg.d_model, bias=False)

    def init_weights(self) -> None:
        self.memory.reset_special_parameters()

    def init_state(self, batch_size, device=None, dtype=None) -> TitansMemoryState:
        return self.memory.initial_state(batch_size, device, dtype)

    def _output(self, x: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        gated = self.out_norm(read) * torch.sigmoid(self.g_proj(x)).view(read.shape)
        return self.o_proj(gated.flatten(-2))

    def forward(self, x, state: Optional[TitansMemoryState] = None, return_state: bool = False, pad_mask=None):
        refuse_padding(self.mixer_name, pad_mask, LEFT_PADDING_REFUSAL)
        read, state = self.memory.run(x, state)
        return self._output(x, read), (state if return_state else None)

    def step(self, x_t, state: TitansMemoryState):
        read, state = self.memory.step(x_t, state)
        return self._output(x_t, read), state
