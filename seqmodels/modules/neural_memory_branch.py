"""The Titans neural-memory branch shared by the LMM layer (titans_memory.py) and MAG (titans_mag.py).

Behrouz et al. 2024, arXiv 2501.00663 §3.1 (Eqs. 11-15), §3.3 (Eq. 19), §4.4; seqmodels/layers/titans_memory.py's
docstring writes out the projections, gates, update rule and persistent prefix this module implements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.kernels._dtype import compute_dtype
from seqmodels.kernels.neural_memory import (
    MLPMemoryState,
    NeuralMemoryState,
    mlp_memory,
    mlp_memory_step,
    neural_memory,
    neural_memory_step,
)
from seqmodels.kernels.short_conv import MAX_KERNEL_SIZE, short_conv, short_conv_step
from seqmodels.modules.options import check_int_option

MEMORY_KINDS = ("matrix", "mlp")
# why titans_memory / titans_mag refuse left padding (the layer docstring's decision)
LEFT_PADDING_REFUSAL = ("would shift the memory's mini-batch boundaries (memory_chunk_size), which sit at absolute "
                        "positions shared by the batch")

# initial gate biases (logits), our choice (the paper gives none): θ = max_lr·σ(0), η = σ(0) = 0.5,
# α = σ(-4) ≈ 0.018 (memory keeps ~98% per token)
THETA_BIAS, ETA_BIAS, ALPHA_BIAS = 0.0, 0.0, -4.0


@dataclass
class TitansMemoryOptions:
    family: ClassVar[str] = "titans_memory"  # names the options in error messages
    memory_chunk_size: int = 16  # b: mini-batch size of the inner gradient step (Eqs. 16-18)
    n_persistent: int = 4  # Eq. 19 persistent memory tokens prepended to the memory input (0 = none)
    conv_size: int = 4  # depthwise causal conv after the q/k/v projections (§4.4); 1 = pointwise scale
    # θ_t = max_lr · σ(·). All b gradients of a mini-batch are taken at the same weights, so with
    # correlated keys one mini-batch moves M by up to ~2·θ·b·(1 + η + η² …) along a key: too large a
    # max_lr diverges. Measured (titans-tiny, random weights, b = 16, η = σ(0)): M stays bounded over
    # 32k tokens at max_lr 0.25 and overflows within ~2k at 0.5 (NaN at 1.0); 0.1 keeps a 2.5x margin.
    max_lr: float = 0.1
    memory: str = "matrix"  # "matrix" (chunked) or "mlp" (2-layer MLP memory, token loop)
    mlp_hidden: Optional[int] = None  # hidden width of the MLP memory (default 2 · head_dim_k)

    def __post_init__(self):
        check_int_option(self.family, "memory_chunk_size", self.memory_chunk_size)
        check_int_option(self.family, "conv_size", self.conv_size, maximum=MAX_KERNEL_SIZE)  # a short conv
        check_int_option(self.family, "n_persistent", self.n_persistent, minimum=0)
        if not isinstance(self.max_lr, (int, float)) or isinstance(self.max_lr, bool) or not self.max_lr > 0:
            raise ValueError(f"max_lr must be a number > 0, got {self.max_lr!r}")
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {list(MEMORY_KINDS)}, got {self.memory!r}")
        check_int_option(self.family, "mlp_hidden", self.mlp_hidden, optional=True)


@dataclass
class TitansMemoryState:
    conv_tail: torch.Tensor  # [B, K-1, H·(2·Dk + Dv)]: the last K-1 projected inputs of the conv
    memory: Union[NeuralMemoryState, MLPMemoryState]


def op_backend(kernel_backend: str) -> str:
    """The memory / conv / attention ops have "naive" and the chunked PyTorch form; other choices map to "auto"."""
    return "naive" if kernel_backend == "naive" else ("torch" if kernel_backend == "torch" else "auto")


class NeuralMemoryBranch(nn.Module):
    """Projections, conv, gates, persistent prefix and the memory update/read of Titans (shared by LMM and MAG).

    run(x, state) -> (read [B, T, H, Dv], state); step(x_t, state) -> (read_t [B, H, Dv], state).
    """

    def __init__(self, cfg, options: TitansMemoryOptions):
        super().__init__()
        self.cfg, self.options = cfg, options
        H, Dk, Dv, d = cfg.n_heads, cfg.dk, cfg.dv, cfg.d_model
        self.n_heads, self.dk, self.dv = H, Dk, Dv
        self.q_proj = nn.Linear(d, H * Dk, bias=False)
        self.k_proj = nn.Linear(d, H * Dk, bias=False)
        self.v_proj = nn.Linear(d, H * Dv, bias=False)
        self.gate_proj = nn.Linear(d, 3 * H, bias=True)  # logits of θ, η, α per head
        self.conv_weight = nn.Parameter(torch.empty(H * (2 * Dk + Dv), options.conv_size))
        self.persistent = nn.Parameter(torch.empty(options.n_persistent, d))
        if options.memory == "mlp":
            hidden = options.mlp_hidden or 2 * Dk
            self.mlp_w1 = nn.Parameter(torch.empty(H, Dk, hidden))
            self.mlp_w2 = nn.Parameter(torch.empty(H, hidden, Dv))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """Init of the parameters the generic init does not own (also re-run by the mixers' init_weights)."""
        K = self.options.conv_size
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(K), 1 / math.sqrt(K))  # nn.Conv1d's default bound
        nn.init.normal_(self.persistent, 0.0, 1.0)  # unit scale, like the normalized block inputs
        with torch.no_grad():
            H = self.n_heads
            self.gate_proj.bias[:H].fill_(THETA_BIAS)
            self.gate_proj.bias[H : 2 * H].fill_(ETA_BIAS)
            self.gate_proj.bias[2 * H :].fill_(ALPHA_BIAS)
        if self.options.memory == "mlp":
            nn.init.normal_(self.mlp_w1, 0.0, self.dk ** -0.5)
            nn.init.normal_(self.mlp_w2, 0.0, self.mlp_w2.shape[1] ** -0.5)

    # ------------------------------------------------------------------ inputs
    def memory_inputs(self, x: torch.Tensor, conv_tail: torch.Tensor):
        """x [B, T, d] -> q, k [B,T,H,Dk], v [B,T,H,Dv], θ, log η, log(1-α) [B,T,H], new conv tail."""
        B, T, _ = x.shape
        H, Dk, Dv = self.n_heads, self.dk, self.dv
        projected = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        backend = op_backend(self.cfg.kernel_backend)
        mixed, tail = short_conv(projected, self.conv_weight, initial_state=conv_tail, output_final_state=True, backend=backend)
        q, k, v = F.silu(mixed).split([H * Dk, H * Dk, H * Dv], dim=-1)
        q = F.normalize(q.view(B, T, H, Dk), dim=-1)
        k = F.normalize(k.view(B, T, H, Dk), dim=-1)
        theta, log_eta, log_retain = self.gates(x)
        return q, k, v.view(B, T, H, Dv), theta, log_eta, log_retain, tail

    def gates(self, x: torch.Tensor):
        logits = self.gate_proj(x)
        a_theta, a_eta, a_alpha = logits.split(self.n_heads, dim=-1)
        return self.options.max_lr * torch.sigmoid(a_theta), F.logsigmoid(a_eta), F.logsigmoid(-a_alpha)

    # ------------------------------------------------------------------- state
    def empty_state(self, batch_size: int, device, dtype) -> TitansMemoryState:
        """The state before the persistent prefix (zero conv tail, M_0, zero momentum)."""
        dtype = dtype or self.conv_weight.dtype
        device = device or self.conv_weight.device
        tail = torch.zeros(batch_size, self.options.conv_size - 1, self.conv_weight.shape[0], device=device, dtype=dtype)
        work = compute_dtype(dtype)
        if self.options.memory == "mlp":
            weights = tuple(w.to(device, work).unsqueeze(0).expand(batch_size, *w.shape) for w in (self.mlp_w1, self.mlp_w2))
            memory = MLPMemoryState.from_weights(weights)
        else:
            memory = NeuralMemoryState.zeros(batch_size, self.n_heads, self.dk, self.dv, dtype=work, device=device)
        return TitansMemoryState(tail, memory)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> TitansMemoryState:
        """The state after the persistent tokens (Eq. 19): what every sequence starts from."""
        state = self.empty_state(batch_size, device, dtype)
        if self.options.n_persistent == 0:
            return state
        prefix = self.persistent.to(device=state.conv_tail.device, dtype=state.conv_tail.dtype)
        _, state = self._run(prefix.unsqueeze(0).expand(batch_size, -1, -1), state)
        return state

    # ----------------------------------------------------------------- compute
    def _run(self, x: torch.Tensor, state: TitansMemoryState):
        q, k, v, theta, log_eta, log_retain, tail = self.memory_inputs(x, state.conv_tail)
        b, backend = self.options.memory_chunk_size, op_backend(self.cfg.kernel_backend)
        if self.options.memory == "mlp":
            read, memory = mlp_memory(q, k, v, theta, log_eta, log_retain, state.memory, b, True, backend)
        else:
            read, memory = neural_memory(q, k, v, theta, log_eta, log_retain, b, state.memory, True, backend)
        return read, TitansMemoryState(tail, memory)

    def run(self, x: torch.Tensor, state: Optional[TitansMemoryState] = None):
        """x [B, T, d] -> (read [B, T, H, Dv], state after x). state None = start after the persistent prefix."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        return self._run(x, state)

    def step(self, x_t: torch.Tensor, state: TitansMemoryState):
        """x_t [B, d] -> (read_t [B, H, Dv], new state)."""
        B = x_t.shape[0]
        H, Dk, Dv = self.n_heads, self.dk, self.dv
        projected = torch.cat([self.q_proj(x_t), self.k_proj(x_t), self.v_proj(x_t)], dim=-1)
        mixed, tail = short_conv_step(projected, self.conv_weight, tail=state.conv_tail)
        q, k, v = F.silu(mixed).split([H * Dk, H * Dk, H * Dv], dim=-1)
        q, k = F.normalize(q.view(B, H, Dk), dim=-1), F.normalize(k.view(B, H, Dk), dim=-1)
        gates = self.gates(x_t)
        b = self.options.memory_chunk_size
        step = mlp_memory_step if self.options.memory == "mlp" else neural_memory_step
        read, memory = step(q, k, v.view(B, H, Dv), *gates, state.memory, b)
        return read, TitansMemoryState(tail, memory)
