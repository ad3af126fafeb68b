"""The pad_mask contract (docs/architecture.md §4.1) over every registered causal mixer, float64:
a right-padded and a left-padded batch give each row's real tokens the outputs of the row run
alone (<= 1e-9 relative), and decoding continues a left-padded prefill exactly (steps and a
forward chunk) — or, for the families listed in REFUSES_LEFT_PADDING, left padding is refused
with one error naming the family and the fix. Pads hold noise, so a mixer that reads them fails."""
import pytest
import torch

from seqmodels import ModelConfig, mixer_names
from seqmodels.layers import get_mixer
from seqmodels.testing import build_mixer, check_padding

BASE = dict(vocab_size=64, d_model=16, n_heads=2, n_layers=2, chunk_size=8, max_seq_len=64)
# per-mixer settings: windows shorter than the rows, so they slide; Mega without its NFFN's mlp clash
OPTIONS = {
    "sliding_window": {"window": 5},
    "lizard": {"window": 6},
    "lolcats": {"window": 6},
    "titans_mag": {"window": 6},
    "titans_memory": {"memory_chunk_size": 4},
    "chela": {"long_kernel": 12},
}
EXTRA = {"mega": {"mlp": "none"}}
CAUSAL = [name for name in mixer_names() if get_mixer(name).causal]
CASES = [(name, {}) for name in CAUSAL] + [
    ("attention", {"n_kv_heads": 1}),
    ("lightning", {"mixer_options": {"lightning": {"lrpe": True}}}),
    ("relit", {"mixer_options": {"relit": {"block": "gtrxl"}}}),
    ("arelit", {"mixer_options": {"arelit": {"r": 3}}}),
    ("base_conv", {"mixer_options": {"base_conv": {"variant": "based", "expand": 2}}}),
    ("lizard", {"n_kv_heads": 1, "mixer_options": {"lizard": {"window": 6, "global_form": "folded"}}}),
    ("lolcats", {"mixer_options": {"lolcats": {"window": 1}}}),
    ("mega", {"mlp": "none", "mixer_options": {"mega": {"attention_chunk": 4}}}),
]
# decided in each layer's docstring: chunk/mini-batch boundaries at absolute positions, or keys not masked
REFUSES_LEFT_PADDING = {"titans_memory", "titans_mag", "mega"}


def config(name, overrides):
    fields = {**BASE, "mixer": name, **EXTRA.get(name, {}), **overrides}
    fields.setdefault("mixer_options", {name: OPTIONS[name]} if name in OPTIONS else {})
    return ModelConfig(**fields)


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_padded_rows_equal_unpadded_rows(name, overrides):
    cfg = config(name, overrides)
    result = check_padding(cfg)
    if name in REFUSES_LEFT_PADDING:
        assert result != "exact" and "left-padded" in result, result
    else:
        assert result == "exact", f"{name} refused left padding: {result}"


def test_every_registered_mixer_is_covered():
    assert sorted(set(CAUSAL) | {"vig"}) == mixer_names()


def test_check_padding_catches_a_mixer_that_reads_pads():
    """The check has teeth: GLA with its pad_mask dropped fails it."""
    mixer_cls = get_mixer("gla")
    original = mixer_cls.forward
    mixer_cls.forward = lambda self, x, state=None, return_state=False, pad_mask=None: original(self, x, state, return_state)
    try:
        with pytest.raises(AssertionError, match="left-padded row 1 vs the row alone"):
            check_padding(config("gla", {}))
    finally:
        mixer_cls.forward = original


def test_bidirectional_mixer_refuses_padding():
    mixer = build_mixer(config("vig", {}))
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 12:] = False
    with pytest.raises(ValueError, match=r"mixer 'vig': padded batches .*; use batch size 1"):
        mixer(x, pad_mask=mask)


def test_refusal_message_names_family_and_fix():
    mixer = build_mixer(config("mega", {"mixer_options": {"mega": {"attention_chunk": 4}}}))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    with pytest.raises(ValueError, match=r"^mixer 'mega': left-padded batches would move its attention chunks "
                                         r"\(attention_chunk\).*; use batch size 1 or prompts of equal length$"):
        mixer(torch.randn(2, 9, 16, dtype=torch.float64), pad_mask=mask)
