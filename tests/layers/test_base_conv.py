"""BaseConv (Zoology arXiv 2312.04927; Based LM arXiv 2402.18668 §3.2; docs/architecture.md §5.6): the five
mixer invariants for both variants, the definition against an nn.Conv1d-based reference written
here (Zoology's ShortConvolution: Conv1d with padding K-1, cropped to T), a SeqLM that learns,
greedy generate, config errors. float64, tolerance 1e-10."""
import pytest
import torch
import torch.nn.functional as F

from seqmodels import ModelConfig
from seqmodels.testing import (
    assert_rel_close,
    build_mixer,
    check_generate_matches_forward,
    check_mixer_contract,
    train_toy_sequence,
)

TOL64 = 1e-10


def cfg_for(**options):
    return ModelConfig(vocab_size=64, d_model=34, n_heads=2, mixer="base_conv", chunk_size=16,
                       mixer_options={"base_conv": options})


@pytest.mark.parametrize("options", [{}, {"kernel_size": 1, "residual": False}, {"variant": "based", "expand": 3}])
def test_mixer_contract(options):
    check_mixer_contract(cfg_for(**options))


def conv1d_reference(u, weight, bias):
    """Zoology's ShortConvolution: depthwise nn.Conv1d with padding K-1, first T outputs (weight[:, 0] = current tap)."""
    K, T = weight.shape[1], u.shape[1]
    y = F.conv1d(u.transpose(1, 2), weight.flip(-1)[:, None], bias, padding=K - 1, groups=u.shape[-1])
    return y[..., :T].transpose(1, 2)


def test_zoology_variant_matches_definition():
    mixer = build_mixer(cfg_for())
    u = torch.randn(2, 37, 34, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = conv1d_reference(u, mixer.conv_weight, mixer.conv_bias) * (u @ mixer.projection.weight.T + mixer.projection.bias) + u
    assert_rel_close(mixer(u)[0], expected, TOL64, "y = ShortConv(u) * (uW + b) + u")


def test_based_variant_matches_definition():
    mixer = build_mixer(cfg_for(variant="based", expand=4))
    u = torch.randn(2, 37, 34, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u1, u2 = (u @ mixer.in_proj.weight.T + mixer.in_proj.bias).split(68, dim=-1)
    expected = mixer.out_proj(F.silu(conv1d_reference(u1, mixer.conv_weight, None)) * u2)
    assert_rel_close(mixer(u)[0], expected, TOL64, "y = (SiLU(ShortConv(u1)) * u2) W_out + b_out")


def test_seqlm_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, mixer="base_conv", chunk_size=16, max_seq_len=128)
    first, last, model = train_toy_sequence(cfg, steps=50)
    # receptive field of 2 layers x kernel 3 is 5 tokens: enough for the period-12 pattern, learnt more slowly
    assert first > 3.0 and last < 1.0, (first, last)
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"kernel_size": 0}, r"kernel_size must be an integer in \[1, 8\]"),
        ({"kernel_size": 9}, r"kernel_size must be an integer in \[1, 8\]"),
        ({"variant": "h3"}, "variant must be one of"),
        ({"variant": "based", "expand": 0}, "expand must be a positive integer"),
        ({"variant": "based", "expand": 1}, "must be even"),
    ],
)
def test_bad_config_raises(options, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=33, n_heads=3, mixer="base_conv", mixer_options={"base_conv": options})
