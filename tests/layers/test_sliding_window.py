"""Sliding-window softmax attention (arXiv 2402.18668 §3.2, docs/architecture.md §5.6): the five mixer
invariants (ring-buffer state constant in T), the definition against a masked softmax written
here, equality with full causal attention when the window covers the sequence, a SeqLM that
learns, greedy generate, config errors. float64, tolerance 1e-10."""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.modules.rope import apply_rope, rope_cos_sin
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(window=5, **extra):
    return ModelConfig(vocab_size=64, d_model=36, n_heads=3, mixer="sliding_window", chunk_size=16,
                       mixer_options={"sliding_window": {"window": window}}, **extra)


@pytest.mark.parametrize("window, extra", [(5, {}), (1, {}), (64, {}), (7, {"n_kv_heads": 1})])
def test_mixer_contract(window, extra):
    check_mixer_contract(cfg_for(window, **extra), split=23)


def test_matches_masked_softmax_definition():
    mixer = build_mixer(cfg_for(window=6))
    x = torch.randn(2, 37, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    B, T, H, D = 2, 37, 3, 12
    q, k, v = (p(x).view(B, T, H, D) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    cos, sin = rope_cos_sin(torch.arange(T), D, 10000.0, torch.float64)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / D ** 0.5
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = scores.masked_fill(~((s <= t) & (s > t - 6)), float("-inf"))
    o = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, H * D)
    assert_rel_close(mixer(x)[0], mixer.o_proj(o), TOL64, "sliding window vs masked softmax")


def test_window_covering_the_sequence_is_causal_attention():
    local = build_mixer(cfg_for(window=37))
    full = build_mixer(ModelConfig(vocab_size=64, d_model=36, n_heads=3, mixer="attention"))
    full.load_state_dict(local.state_dict())
    x = torch.randn(1, 37, 36, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_rel_close(local(x)[0], full(x)[0], TOL64, "window >= T vs causal attention")


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="sliding_window", chunk_size=16,
                      max_seq_len=128, mixer_options={"sliding_window": {"window": 8}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 0.5, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(2)), 10)


@pytest.mark.parametrize("window", [0, -3, 2.5])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="window must be a positive integer"):
        cfg_for(window=window)


def test_odd_head_dim_with_rope_raises():
    with pytest.raises(ValueError, match="rotary embeddings need an even head_dim_k"):
        ModelConfig(d_model=30, n_heads=2, mixer="sliding_window", head_dim_k=15, head_dim_v=15)
