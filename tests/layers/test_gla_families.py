"""Models of the families built on `gla`. Causal ones (RetNet, Lightning, GLA, LightNet):
each tiny preset learns a repeating toy sequence in 50 steps (ln 64 ≈ 4.16 -> below 0.5: the
gates and feature maps are not saturated at init), and greedy `generate` (chunked prefill, then
recurrent steps) emits the same tokens as argmax over repeated full forwards (float64). All,
ViG included: bf16 close to float64."""
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


@pytest.mark.parametrize("preset, options", [(p, {}) for p in PRESETS[::2]] + [("lightning-tiny", {"lightning": {"lrpe": True}}),
                                             ("lightnet-tiny", {})])
def test_hugging_face_round_trip_and_generate(preset, options, tmp_path):
    """save_pretrained -> AutoModelForCausalLM gives identical logits (no state lost on meta-device
    loading), and HF generate (our state as its cache) == our greedy generate."""
    from transformers import AutoModelForCausalLM

    from seqmodels import SeqModelsConfig, SeqModelsForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, vocab_size=64, chunk_size=16, **({"mixer_options": options} if options else {}))
    model = SeqModelsForCausalLM(SeqModelsConfig(cfg)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    hf_tokens = loaded.generate(ids[:1], max_new_tokens=6, do_sample=False)
    assert torch.equal(hf_tokens, loaded.model.generate(ids[:1], max_new_tokens=6, temperature=0))


@pytest.mark.parametrize("preset", PRESETS + ["vig-tiny"])
def test_bfloat16_forward_close_to_float64(preset):
    """The whole model in bf16 (states and gates accumulate in float32): logits within 1e-2
    relative RMS of the float64 model (the bf16 tolerance of docs/architecture.md §8)."""
    from seqmodels.testing import rel_rms_err

    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset(preset, vocab_size=64, chunk_size=16)).double()
    ids = torch.randint(0, 64, (2, 36))  # 36 = a 6x6 grid for vig
    expected = model(ids).logits
    assert rel_rms_err(model.to(torch.bfloat16)(ids).logits, expected) < 1e-2
