"""Channel mixers, chosen by `cfg.mlp`.

- swiglu: down(silu(gate(x)) * up(x))  (Shazeer 2020, "GLU Variants", Eq. 6; Llama's MLP)
- sglu:   down(gate(x) * up(x))        (TransNormerLLM's SGLU, arXiv 2307.14995 §3.4: no activation)
- gelu:   down(gelu(up(x)))            (the GPT-2 MLP)
- none:   no channel mixer (Zoology MQAR models, Mega's own block)
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, activation: str):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)
        self.activation = activation

    def forward(self, x):
        gate = self.gate_proj(x)
        if self.activation == "silu":
            gate = F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class GeluMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


def build_mlp(cfg) -> nn.Module | None:
    if cfg.mlp == "none":
        return None
    if cfg.mlp == "swiglu":
        return GatedMLP(cfg.d_model, cfg.mlp_hidden, "silu")
    if cfg.mlp == "sglu":
        return GatedMLP(cfg.d_model, cfg.mlp_hidden, "identity")
    return GeluMLP(cfg.d_model, cfg.mlp_hidden)
