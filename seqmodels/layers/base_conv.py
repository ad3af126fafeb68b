"""BaseConv: a gated short convolution, the cheap local mixer of the Zoology/Based hybrids.

Arora et al. 2023, Zoology (arXiv 2312.04927, §3 and App.; BaseConv from Arora et al. 2023/H3
lineage) and the Based LM (arXiv 2402.18668 §3.2). Two forms, selected by
`mixer_options.base_conv.variant`:

- "zoology" (default; HazyResearch/zoology zoology/mixers/base_conv.py):
      y = ShortConv(u) ⊙ (u W + b) + u
  depthwise causal conv (kernel 3, with bias) times a linear projection (with bias), plus the
  input itself (`residual: false` drops this inner residual; the block's residual is separate).
- "based" (HazyResearch/based based/models/mixers/convolution.py BaseConv, used by the Based
  360M/1.3B configs with expand_proj 4):
      [u1, u2] = u W_in + b_in  (each expand·d/2 wide),   y = (SiLU(ShortConv(u1)) ⊙ u2) W_out + b_out
  with a bias-free convolution.

Decoding state: the convolution's last K-1 inputs [B, K-1, channels] (short_conv tail), constant in T.
Padding: the convolution's input is 0 at pads, which is exactly the zero tail a sequence starts from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.kernels.short_conv import MAX_KERNEL_SIZE, short_conv, short_conv_step
from seqmodels.layers.base import Mixer
from seqmodels.layers.registry import register_mixer
from seqmodels.modules.options import check_int_option
from seqmodels.modules.padding import zero_pads

VARIANTS = ("zoology", "based")


@dataclass
class BaseConvOptions:
    kernel_size: int = 3
    variant: str = "zoology"  # "zoology" (y = conv(u) ⊙ (uW + b) + u) or "based" (gated, expanded)
    residual: bool = True  # zoology variant: add u inside the mixer, as Zoology's BaseConv does
    expand: int = 4  # based variant: in_proj width = expand · d_model (two halves)

    def __post_init__(self):
        check_int_option("base_conv", "kernel_size", self.kernel_size, maximum=MAX_KERNEL_SIZE)
        if self.variant not in VARIANTS:
            raise ValueError(f"mixer_options.base_conv.variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        check_int_option("base_conv", "expand", self.expand)


@register_mixer("base_conv")
class BaseConv(Mixer):
    Options = BaseConvOptions

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts, d = self.options, cfg.d_model
        if opts.variant == "zoology":
            self.channels = d
            self.projection = nn.Linear(d, d, bias=True)
            self.conv_bias = nn.Parameter(torch.empty(d))
        else:
            self.channels = opts.expand * d // 2
            self.in_proj = nn.Linear(d, 2 * self.channels, bias=True)
            self.out_proj = nn.Linear(self.channels, d, bias=True)
            self.register_parameter("conv_bias", None)
        self.conv_weight = nn.Parameter(torch.empty(self.channels, opts.kernel_size))  # [:, 0] multiplies x_t
        self.init_weights()

    @staticmethod
    def check_config(cfg, options) -> None:
        if options.variant == "based" and (options.expand * cfg.d_model) % 2:
            raise ValueError(
                f"mixer_options.base_conv.expand={options.expand} times d_model={cfg.d_model} must be even "
                "(the based variant splits the projection in two halves)"
            )

    def init_weights(self) -> None:
        """nn.Conv1d's default init for a depthwise kernel: U(-1/√K, 1/√K) (fan_in = K)."""
        bound = self.options.kernel_size ** -0.5
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)

    def _backend(self) -> str:
        return "naive" if self.cfg.kernel_backend == "naive" else "auto"

    def init_state(self, batch_size, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.options.kernel_size - 1, self.channels, device=device, dtype=dtype)

    def forward(self, u, state=None, return_state: bool = False, pad_mask=None):
        if self.options.variant == "zoology":
            conv, tail = short_conv(zero_pads(u, pad_mask), self.conv_weight, self.conv_bias, state, return_state, self._backend())
            return self._zoology_out(u, conv), tail
        u1, u2 = self.in_proj(u).chunk(2, dim=-1)
        conv, tail = short_conv(zero_pads(u1, pad_mask), self.conv_weight, None, state, return_state, self._backend())
        return self.out_proj(F.silu(conv) * u2), tail

    def step(self, u_t, state):
        if self.options.variant == "zoology":
            conv, tail = short_conv_step(u_t, self.conv_weight, self.conv_bias, state)
            return self._zoology_out(u_t, conv), tail
        u1, u2 = self.in_proj(u_t).chunk(2, dim=-1)
        conv, tail = short_conv_step(u1, self.conv_weight, None, state)
        return self.out_proj(F.silu(conv) * u2), tail

    def _zoology_out(self, u, conv):
        y = conv * self.projection(u)
        return y + u if self.options.residual else y
