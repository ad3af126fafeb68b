"""Hugging Face wrapper: save_pretrained -> AutoModelForCausalLM round trip, HF generate."""
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import seqmodels  # noqa: F401  (registers the Auto classes)
from seqmodels import ModelConfig, SeqModelsConfig, SeqModelsForCausalLM


def test_round_trip_identical_logits_and_generate(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("transformer-tiny", vocab_size=101, n_kv_heads=2)
    model = SeqModelsForCausalLM(SeqModelsConfig(cfg)).eval()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SeqModelsConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SeqModelsForCausalLM)
    assert loaded.model.lm_head.weight is loaded.model.embed.weight  # tie survives loading
    ids = torch.randint(0, 101, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    hf_tokens = loaded.generate(ids[:1], max_new_tokens=6, do_sample=False)
    ours = loaded.model.generate(ids[:1], max_new_tokens=6, temperature=0)
    assert torch.equal(hf_tokens, ours)


def test_hf_loss_uses_shifted_labels():
    torch.manual_seed(0)
    model = SeqModelsForCausalLM(SeqModelsConfig(ModelConfig.from_preset("transformer-tiny", vocab_size=50)))
    ids = torch.randint(0, 50, (2, 7))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert torch.allclose(out.loss, expected, rtol=1e-6, atol=0)
