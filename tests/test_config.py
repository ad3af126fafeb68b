"""ModelConfig validation, presets and YAML round trip."""
import pytest

import seqmodels
from seqmodels import ModelConfig


def test_presets_listed_and_loadable():
    names = seqmodels.presets()
    assert {"transformer-tiny", "transformer-125m", "transformer-350m"} <= set(names)
    cfg = ModelConfig.from_preset("transformer-tiny", d_model=32, n_heads=2)
    assert (cfg.d_model, cfg.n_heads, cfg.mixer, cfg.name) == (32, 2, "attention", "transformer-tiny")


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*transformer-tiny"):
        ModelConfig.from_preset("nope")


def test_unknown_field_lists_valid_fields():
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['d_modle'\].*d_model"):
        ModelConfig.from_dict({"d_modle": 64})


def test_unknown_mixer_lists_registered():
    with pytest.raises(ValueError, match=r"unknown mixer 'retnett'.*attention"):
        ModelConfig(mixer="retnett")
    with pytest.raises(ValueError, match=r"unknown mixer 'nope'"):
        ModelConfig(layers=["attention", "nope"])


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"d_model=100 is not divisible by n_heads=3.*\[1, 2, 4, 5"):
        ModelConfig(d_model=100, n_heads=3)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mlp", "relu", r"mlp='relu' is not one of"),
        ("norm", "batchnorm", r"norm='batchnorm' is not one of"),
        ("n_layers", 0, r"n_layers must be a positive integer"),
        ("kernel_backend", "cuda", r"kernel_backend='cuda' is not one of"),
        ("n_kv_heads", 3, r"n_heads=4 must be a multiple of n_kv_heads=3"),
    ],
)
def test_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{field: value})


def test_classify_head_needs_classes():
    with pytest.raises(ValueError, match=r"num_classes >= 2"):
        ModelConfig(head="classify")


def test_mixer_options_validated_by_family():
    cfg = ModelConfig(mixer_options={"attention": {"qkv_bias": True}})
    assert cfg.options_for("attention").qkv_bias is True
    with pytest.raises(ValueError, match=r"mixer_options.attention: unknown option\(s\) \['bias'\].*qkv_bias"):
        ModelConfig(mixer_options={"attention": {"bias": True}})
    with pytest.raises(ValueError, match=r"names mixer\(s\) \['gla'\] that no layer uses"):
        ModelConfig(mixer_options={"gla": {}})


def test_yaml_round_trip(tmp_path):
    cfg = ModelConfig.from_preset("transformer-tiny", n_kv_heads=2)
    path = tmp_path / "sub" / "model.yaml"
    cfg.to_yaml(path)
    assert ModelConfig.from_yaml(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["model.yaml"]  # no temp file left behind


def test_yaml_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist"):
        ModelConfig.from_yaml(tmp_path / "missing.yaml")


def test_hybrid_pattern_assignment():
    cfg = ModelConfig(n_layers=5, layers=["attention"])
    assert [cfg.mixer_for_layer(i) for i in range(5)] == ["attention"] * 5
