"""Titans memory as a gate (MAG, arXiv 2501.00663 Eqs. 26-28; docs/architecture.md §5.8): the five mixer invariants
(sliding-window ring buffer + memory state, constant in T; GQA), the layer against the definition written
out here (softmax over [persistent ‖ window], memory branch, out = W_O(RMSNorm(y) ⊙ σ(RMSNorm(M(x̃))))),
a SeqLM that learns, greedy generate, presets, config errors. float64, tolerance 1e-10."""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.modules.rope import apply_rope, rope_cos_sin
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    check_step_matches_forward,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(n_kv_heads=None, **options):
    options = {"memory_chunk_size": 5, "n_persistent": 3, "window": 8, **options}
    return ModelConfig(vocab_size=64, d_model=36, n_heads=3, n_kv_heads=n_kv_heads, mixer="titans_mag", chunk_size=16,
                       mixer_options={"titans_mag": options})


@pytest.mark.parametrize("n_kv_heads, options", [(None, {}), (1, {"n_persistent": 0, "window": 1}), (None, {"window": 40, "memory_chunk_size": 1})])
def test_mixer_contract(n_kv_heads, options):
    check_mixer_contract(cfg_for(n_kv_heads, **options))


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_matches_definition():
    """Eqs. 26-28 written out: queries see the persistent keys (unrotated) and the last w rotated keys."""
    mixer = build_mixer(cfg_for(n_kv_heads=1, window=6))
    x = torch.randn(2, 21, 36, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    B, T, H, D, P = 2, 21, 3, 12, 3
    attn = mixer.attn
    q = attn.q_proj(x).view(B, T, H, D)
    k = attn.k_proj(x).view(B, T, 1, D).expand(B, T, H, D)
    v = attn.v_proj(x).view(B, T, 1, D).expand(B, T, H, D)
    cos, sin = rope_cos_sin(torch.arange(T), D, 10000.0, torch.float64)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    pk = attn.k_proj(mixer.memory.persistent).view(P, 1, D).expand(P, H, D)
    pv = attn.v_proj(mixer.memory.persistent).view(P, 1, D).expand(P, H, D)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / D ** 0.5
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = scores.masked_fill(~((s <= t) & (s > t - 6)), float("-inf"))
    prefix_scores = torch.einsum("bthd,phd->bhtp", q, pk).div(D ** 0.5)
    weights = torch.cat([prefix_scores, scores], -1).softmax(-1)
    y = torch.einsum("bhtp,phd->bthd", weights[..., :P], pv) + torch.einsum("bhts,bshd->bthd", weights[..., P:], v)
    read, _ = mixer.memory.run(x)
    eps = mixer.cfg.norm_eps
    gated = _rms(y, mixer.attn_norm.weight, eps) * torch.sigmoid(_rms(read, mixer.memory_norm.weight, eps))
    assert_rel_close(mixer(x)[0], attn.o_proj(gated.reshape(B, T, H * D)), TOL64, "MAG vs Eqs. 26-28")


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, chunk_size=16, max_seq_len=128, mixer="titans_mag",
                      mixer_options={"titans_mag": {"memory_chunk_size": 4, "n_persistent": 2, "window": 8}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 1.0, (first, last)  # measured 0.61 (from ~3.47)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(2)), 10)


def test_preset_loads():
    cfg = ModelConfig.from_preset("titans-mag-tiny")
    assert cfg.mixer == "titans_mag" and cfg.options_for("titans_mag").window == 64


@pytest.mark.parametrize("kw, message", [
    ({"window": 0}, "window must be a positive integer"),
    ({"memory_chunk_size": 2.5}, "memory_chunk_size must be a positive integer"),
    ({"head_dim_v": 6}, r"head_dim_k \(12\) must equal head_dim_v \(6\)"),
    ({"head_dim_k": 7, "head_dim_v": 7}, "even head_dim_k"),
])
def test_bad_config_raises(kw, message):
    options = {k: v for k, v in kw.items() if k in ("window", "memory_chunk_size")}
    fields = {k: v for k, v in kw.items() if k not in options}
    with pytest.raises(ValueError, match=message):
        ModelConfig(vocab_size=64, d_model=36, n_heads=3, mixer="titans_mag", mixer_options={"titans_mag": options}, **fields)


def test_float32_step_matches_forward():
    """float32: forward == token-by-token step within 1e-5 relative (states accumulate in float32)."""
    mixer = build_mixer(cfg_for(), dtype=torch.float32)
    x = torch.randn(2, 37, 36, generator=torch.Generator().manual_seed(7))
    check_step_matches_forward(mixer, x, 1e-5)
