"""Based linear attention (arXiv 2402.18668 §3.1, docs/architecture.md §5.6): the five mixer invariants, the
Taylor-map identity, 273-dim == 153-dim packing, fla's naive_parallel_based as an outside oracle,
a SeqLM that learns, greedy generate, and config errors. float64, tolerance 1e-10 unless stated."""
import pytest
import torch

from seqmodels import ModelConfig
from seqmodels.layers.based import taylor_feature_dim, taylor_feature_map
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(**options):
    return ModelConfig(vocab_size=64, d_model=42, n_heads=3, mixer="based", chunk_size=16,
                       mixer_options={"based": {"feature_dim": 5, **options}})


@pytest.mark.parametrize("packing", ["full", "symmetric"])
def test_mixer_contract(packing):
    check_mixer_contract(cfg_for(packing=packing))


@pytest.mark.parametrize("packing", ["full", "symmetric"])
def test_taylor_map_is_second_order_exp(packing):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 16, generator=g, dtype=torch.float64), torch.randn(4, 16, generator=g, dtype=torch.float64)
    fx, fy = taylor_feature_map(x, packing), taylor_feature_map(y, packing)
    assert fx.shape[-1] == taylor_feature_dim(16, packing) == {"full": 273, "symmetric": 153}[packing]
    a = (x * y).sum(-1) / 4.0  # q·k / sqrt(d'), d' = 16
    assert_rel_close((fx * fy).sum(-1), 1 + a + a * a / 2, TOL64, "φ(x)·φ(y)")


def test_full_and_symmetric_packing_give_the_same_outputs():
    full = build_mixer(cfg_for(feature_dim=16, packing="full"))
    sym = build_mixer(cfg_for(feature_dim=16, packing="symmetric"))
    sym.load_state_dict(full.state_dict())
    x = torch.randn(2, 37, 42, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_full, s_full = full(x, return_state=True)
    y_sym, s_sym = sym(x, return_state=True)
    assert_rel_close(y_sym, y_full, TOL64, "153-dim vs 273-dim Taylor packing")
    assert s_full.shape[2] == 273 and s_sym.shape[2] == 153


def test_matches_fla_naive_parallel_based():
    """fla's naive_parallel_based ([B,H,T,D]; scales q by `scale`, attn = 1 + a + a²/2, divides by
    z + 1e-6): with scale = d'^-1/2 it is our layer's normalized output before o_proj."""
    pytest.importorskip("fla", reason="flash-linear-attention is not installed: fla oracle skipped")
    from fla.ops.based.naive import naive_parallel_based

    mixer = build_mixer(cfg_for(feature_dim=16, eps=1e-6))
    x = torch.randn(2, 37, 42, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    B, T, H = 2, 37, 3
    q = mixer.q_proj(x).view(B, T, H, 16).transpose(1, 2)
    k = mixer.k_proj(x).view(B, T, H, 16).transpose(1, 2)
    v = mixer.v_proj(x).view(B, T, H, 14).transpose(1, 2)
    o_ref = naive_parallel_based(q, k, v, scale=16 ** -0.5, use_norm=True)
    y_ref = mixer.o_proj(o_ref.transpose(1, 2).reshape(B, T, H * 14))
    y, _ = mixer(x)
    assert_rel_close(y, y_ref, TOL64, "based layer vs fla naive_parallel_based")


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="based", chunk_size=16,
                      max_seq_len=128, mixer_options={"based": {"feature_dim": 8}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert first > 3.0 and last < 0.5, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize(
    "options, extra, match",
    [
        ({"feature_dim": 0}, {}, "feature_dim must be a positive integer"),
        ({"packing": "half"}, {}, "packing must be one of"),
        ({"eps": 0.0}, {}, "eps must be > 0"),
        ({"feature_dim": 16}, {"head_dim_k": 8}, "head_dim_k=8 does not match mixer_options.based.feature_dim=16"),
    ],
)
def test_bad_config_raises(options, extra, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=32, n_heads=2, mixer="based", mixer_options={"based": options}, **extra)
