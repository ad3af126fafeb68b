"""Language models of the causal families built on `gla` (RetNet, Lightning, GLA, LightNet):
each tiny preset learns a repeating toy sequence in 50 steps (ln 64 ≈ 4.16 -> below 0.5: the
gates and feature maps are not saturated at init), and greedy `generate` (chunked prefill, then
recurrent steps) emits the same tokens as argmax over repeated full forwards (float64)."""
import math

import pytest
import torch

from seqmodels import ModelConfig, SeqLM
from seqmodels.testing import check_generate_matches_forward, train_toy_sequence

PRESETS = ["retnet-tiny", "lightning-tiny", "gla-tiny", "lightnet-tiny"]


@pytest.mark.parametrize("preset", PRESETS)
def test_toy_sequence_trains(preset):
    first, last, _ = train_toy_sequence(ModelConfig.from_preset(preset, vocab_size=64, chunk_size=16))
    assert first > math.log(64) - 0.5 and last < 0.5, (first, last)


@pytest.mark.parametrize("preset, options", [(p, {}) for p in PRESETS] + [("lightning-tiny", {"lightning": {"lrpe": True}})])
def test_generate_matches_repeated_forward(preset, options):
    """lightning with LRPE: decoding must carry the position offset."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, vocab_size=64, chunk_size=16, **({"mixer_options": options} if options else {}))
    check_generate_matches_forward(SeqLM(cfg).double(), torch.randint(0, 64, (2, 21)))
