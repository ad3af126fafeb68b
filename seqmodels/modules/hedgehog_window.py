"""The base of the linearized-attention mixers Lizard (arXiv 2507.09025 §3) and LoLCATs (arXiv 2410.10254 §3.1).

Both replace a softmax attention by Hedgehog feature maps (Zhang et al. 2024, arXiv 2402.04347)
over its own q/k/v/o projections plus a softmax over a window of recent keys. `HedgehogWindowBase`
holds what they share: the projections under softmax attention's names and shapes (GQA, optional
biases; rotary positions, where a family uses them, are its own), the per-head feature maps
W_q, W_k [H, Dk, F] (identity at init), the window's WindowCache and `from_attention`, which
copies a teacher's q/k/v/o.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from seqmodels.kernels.attention import WindowCache
from seqmodels.layers.base import Mixer


class HedgehogWindowBase(Mixer):
    """Projections (attention-compatible names), per-head feature maps W_q, W_k [H, Dk, F], from_attention."""

    def __init__(self, cfg, layer_idx: int):
        super().__init__(cfg, layer_idx)
        opts = self.options
        self.n_heads, self.n_kv_heads, self.dk, self.dv = cfg.n_heads, cfg.kv_heads, cfg.dk, cfg.dv
        self.feature_dim = opts.feature_dim or cfg.dk
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.dk, bias=opts.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.dk, bias=opts.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.dv, bias=opts.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.dv, cfg.d_model, bias=opts.o_bias)
        self.feature_q = nn.Parameter(torch.empty(self.n_heads, self.dk, self.feature_dim))
        self.feature_k = nn.Parameter(torch.empty(self.n_heads, self.dk, self.feature_dim))

    def init_weights(self) -> None:
        """Feature maps start at the identity: W_h = I [Dk, F] (rectangular eye when F != Dk)."""
        eye = torch.eye(self.dk, self.feature_dim, dtype=self.feature_q.dtype, device=self.feature_q.device)
        with torch.no_grad():
            self.feature_q.copy_(eye.expand_as(self.feature_q))
            self.feature_k.copy_(eye.expand_as(self.feature_k))

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def project(self, x: torch.Tensor):
        """q [B,T,H,Dk], k [B,T,Hkv,Dk], v [B,T,Hkv,Dv] (no rotary positions)."""
        B, T, _ = x.shape
        return (self.q_proj(x).view(B, T, self.n_heads, self.dk), self.k_proj(x).view(B, T, self.n_kv_heads, self.dk),
                self.v_proj(x).view(B, T, self.n_kv_heads, self.dv))

    def expand_kv(self, t: torch.Tensor) -> torch.Tensor:
        """[..., Hkv, D] -> [..., H, D] (query head h reads kv head h // group)."""
        return t.repeat_interleave(self.group, dim=-2) if self.group > 1 else t

    def feature_logits(self, q: torch.Tensor, k: torch.Tensor):
        """u_q = q W_q, u_k = k W_k per query head: q [..., H, Dk], k [..., Hkv, Dk] -> [..., H, F] each."""
        return torch.einsum("...hd,hdf->...hf", q, self.feature_q), torch.einsum("...hd,hdf->...hf", self.expand_kv(k), self.feature_k)

    def new_window_cache(self, batch_size, device, dtype) -> WindowCache:
        w = self.options.window
        return WindowCache(torch.zeros(batch_size, w, self.n_kv_heads, self.dk, device=device, dtype=dtype),
                           torch.zeros(batch_size, w, self.n_kv_heads, self.dv, device=device, dtype=dtype), 0)

    @classmethod
    def options_from_teacher(cls, attn) -> dict:
        """The Options a student takes from its teacher attention unless given: the projection biases."""
        return {"qkv_bias": attn.options.qkv_bias, "o_bias": attn.options.o_bias}

    @classmethod
    def from_attention(cls, attn, **options) -> "HedgehogWindowBase":
        """A mixer of this family with `attn`'s q/k/v/o weights (and biases) copied; every new parameter gets
        `init_weights()`'s init. `options` override this family's Options (window, n_meta, ...) and those
        `options_from_teacher` reads (LoLCATs: the rotary switch; rope_theta comes with the copied config).
        Same device and dtype as `attn`."""
        from seqmodels.layers.attention import SoftmaxAttention  # the teacher family (imported here: modules import no family)

        if not isinstance(attn, SoftmaxAttention):
            raise ValueError(f"from_attention needs a SoftmaxAttention module (mixer 'attention'), got {type(attn).__name__}")
        options = {**cls.options_from_teacher(attn), **options}
        cfg = dataclasses.replace(attn.cfg, mixer=cls.mixer_name, layers=None, mixer_options={cls.mixer_name: options})
        weight = attn.q_proj.weight
        mixer = cls(cfg, attn.layer_idx).to(device=weight.device, dtype=weight.dtype)
        mixer.init_weights()
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                src, dst = getattr(attn, name), getattr(mixer, name)
                dst.weight.copy_(src.weight)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
        return mixer
