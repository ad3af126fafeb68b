"""Zoology/Based hybrids through the `layers:` pattern (docs/architecture.md §4.2, §5.6) and the
presets: the mixer contract for every layer of a hybrid, a [base_conv, based] SeqLM that learns
and decodes like its forward, a 3-way Based-LM pattern decoding, preset shapes and sizes."""
import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.testing import check_generate_matches_forward, check_mixer_contract, train_toy_sequence


def hybrid_cfg(**overrides):
    values = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=2, layers=["base_conv", "based", "sliding_window"],
                  chunk_size=16, mixer_options={"based": {"feature_dim": 6}, "sliding_window": {"window": 7}})
    values.update(overrides)
    return ModelConfig(**values)


@pytest.mark.parametrize("layer_idx, name", [(0, "base_conv"), (1, "based"), (2, "sliding_window")])
def test_mixer_contract_for_each_layer_of_a_hybrid(layer_idx, name):
    mixer = check_mixer_contract(hybrid_cfg(), layer_idx=layer_idx)
    assert mixer.mixer_name == name


def test_base_conv_based_hybrid_learns_and_generates():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=1, layers=["base_conv", "based"], mlp="none",
                      chunk_size=16, max_seq_len=128, mixer_options={"based": {"feature_dim": 8}})
    first, last, model = train_toy_sequence(cfg, steps=50)
    assert [b.mixer.mixer_name for b in model.blocks] == ["base_conv", "based"]
    assert first > 3.0 and last < 1.0, (first, last)  # no MLP (Zoology's MQAR shape): learns more slowly
    check_generate_matches_forward(model, torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1)))


def test_based_lm_pattern_generates_like_forward_past_the_window():
    torch.manual_seed(0)
    model = SeqLM(hybrid_cfg(n_layers=6)).double()
    check_generate_matches_forward(model, torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2)), 8)


@pytest.mark.parametrize("name", ["based-tiny", "relit-tiny", "arelit-tiny", "sliding_window-tiny", "base_conv-tiny"])
def test_tiny_presets_build_under_a_million_parameters(name):
    cfg = ModelConfig.from_preset(name)
    n = SeqLM(cfg).num_parameters()
    assert 10_000 < n <= 1_000_000, (name, n)


def test_based_360m_preset_matches_the_released_shape():
    cfg = ModelConfig.from_preset("based-360m")
    names = [cfg.mixer_for_layer(i) for i in range(cfg.n_layers)]
    assert [i for i, n in enumerate(names) if n == "based"] == [1, 6, 11, 16, 21]
    assert [i for i, n in enumerate(names) if n == "sliding_window"] == [2, 7, 12, 17, 22]
    assert cfg.mlp_hidden == 2048
    with torch.device("meta"):
        n = SeqLM(cfg).num_parameters()
    assert 330e6 < n < 400e6, n


def test_zoology_mqar_preset_and_overrides():
    cfg = ModelConfig.from_preset("zoology-mqar")
    assert (cfg.n_layers, cfg.mlp, cfg.d_model, cfg.layers) == (2, "none", 64, ["base_conv", "based"])
    for d_model in (128, 256):
        assert ModelConfig.from_preset("zoology-mqar", d_model=d_model).d_model == d_model
    other = ModelConfig.from_preset("zoology-mqar", layers=["base_conv", "sliding_window"],
                                    mixer_options={"sliding_window": {"window": 64}})
    assert other.mixer_names() == ["base_conv", "sliding_window"]
