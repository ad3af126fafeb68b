"""ReLiT: recurrent linear transformer with learned key and value gates (separable decay).

Pramanik, Elelimy, Machado, White, "Recurrent Linear Transformers" (arXiv 2310.15719; v2 retitled
AGaLiTe, where ReLiT is called GaLiTe). The paper's text was not readable from this environment,
so equation numbers are not cited; the layer follows docs/architecture.md §5.11 and the authors' released code
(github.com/subho406/agalite, src/models/relit/arelit.py: the feature map and gates below).

Per head (x_t the layer input, η the feature expansion, dk/dv the key/value head dims):

    φ(k_t) = vec(relu(p1_t) ⊗ relu(W_k x_t))          p1 = W_p1 x ∈ R^η      (η·dk features)
    φ(q_t) = vec(relu(p2_t) ⊗ relu(W_q x_t))          p2 = W_p2 x ∈ R^η
    γ_t    = vec(σ(p3_t) ⊗ σ(W_γ x_t))                key gate, outer product of sigmoids
    β_t    = σ(W_β x_t) ∈ R^dv                         value gate
    C_t = ((1-β_t)(1-γ_t)ᵀ) ⊙ C_{t-1} + (β_t ⊙ v_t)(γ_t ⊙ φ(k_t))ᵀ
    s_t = (1-γ_t) ⊙ s_{t-1} + γ_t ⊙ φ(k_t)
    o_t = C_t φ(q_t) / (s_t · φ(q_t) + eps)

**Decision:** the separable decay above, not the released ReLiT code's coupled
1 - β γᵀ; it is exactly `gla` with log_decay_k = log(1-γ), log_decay_v = log(1-β), k = γ⊙φ(k),
v = β⊙v, q = φ(q), scale 1, and the normalizer s as the ones column (value decay 0 there, so the
last output column is s_t·φ(q_t)) — see normalized_gla. log(1-β) = logsigmoid(-W_β x);
log(1-γ) = log1mexp(logsigmoid(a) + logsigmoid(b)), finite and ≤ 0 for every input.
Block (`block` option): "standard" = our pre-norm residual block; "gtrxl" = the paper's
attention sublayer wiring x ← g(x, relu(Mixer(Norm(x)))) with GTrXL's GRU gate g (seqmodels/modules/gru_gate.py,
the mixer then owns the residual: residual_in_mixer). The paper also gates its ReLU FFN with a
GRU; here the channel mixer keeps the standard residual (set `mlp` as wanted): a partial port.
Decoding state: S [B, H, η·dk, dv + 1] ([Cᵀ | s]), constant in T.
"""
from __future__ import annotations

import torch

from seqmodels.layers.registry import register_mixer
from seqmodels.modules.normalized_gla import normalized_gla, normalized_gla_step, zero_state
from seqmodels.modules.relit_base import ReLiTBase, ReLiTOptions


@register_mixer("relit")
class ReLiT(ReLiTBase):
    """Features, gates and block wiring from seqmodels/modules/relit_base.py; the state is [Cᵀ | s]."""

    Options = ReLiTOptions

    def init_state(self, batch_size, device=None, dtype=None) -> torch.Tensor:
        return zero_state(batch_size, self.n_heads, self.feature_dim, self.head_dim_v, device, dtype)

    def _mix(self, x, state, return_state, pad_mask=None):
        B, T, _ = x.shape
        phi_q, k, v, log_decay_k, log_decay_v = self.features(x, pad_mask)[:5]
        o, new_state = normalized_gla(phi_q, k, v, self.options.eps, log_decay_k, log_decay_v, initial_state=state,
                                      output_final_state=return_state, chunk_size=self.cfg.chunk_size,
                                      backend=self.cfg.kernel_backend)
        return self.o_proj(o.reshape(B, T, -1)), new_state

    def _mix_step(self, x_t, state):
        phi_q, k, v, log_decay_k, log_decay_v = (t[:, 0] for t in self.features(x_t[:, None])[:5])
        o, state = normalized_gla_step(phi_q, k, v, state, self.options.eps, log_decay_k, log_decay_v)
        return self.o_proj(o.reshape(x_t.shape[0], -1)), state
