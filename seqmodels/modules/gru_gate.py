"""GRU-type gating in place of a residual connection (GTrXL, Parisotto et al. 2019, arXiv 1910.06764 §3.1).

    r = σ(W_r y + U_r x),  z = σ(W_z y + U_z x − b_g),  ĥ = tanh(W_g y + U_g (r ⊙ x))
    g(x, y) = (1 − z) ⊙ x + z ⊙ ĥ

x is the residual stream, y the sublayer's output; b_g > 0 (2 in GTrXL and in the ReLiT/AReLiT
code) starts the gate near the identity map. Used by ReLiT/AReLiT's `block: gtrxl` (relit.py).
"""
from __future__ import annotations

import torch
from torch import nn


class GRUGate(nn.Module):
    def __init__(self, dim: int, gate_bias: float = 2.0):
        super().__init__()
        self.gate_bias = gate_bias
        self.y_proj = nn.Linear(dim, 3 * dim, bias=False)  # W_r, W_z, W_g
        self.x_proj = nn.Linear(dim, 2 * dim, bias=False)  # U_r, U_z
        self.rx_proj = nn.Linear(dim, dim, bias=False)  # U_g

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wr, wz, wg = self.y_proj(y).chunk(3, dim=-1)
        ur, uz = self.x_proj(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.gate_bias)
        h = torch.tanh(wg + self.rx_proj(r * x))
        return (1 - z) * x + z * h
