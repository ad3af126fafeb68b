"""from_llama / to_llama: a tiny random HF Llama (saved with save_pretrained) <-> our Transformer.

HF's Llama computes RMSNorm and RoPE in float32 whatever the model dtype, so the comparison
with HF's own forward is in float32 (tolerance 1e-5 relative); the round trip
Llama -> ours -> Llama is exact (same weights, bit-identical logits).
"""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from seqmodels.llama import from_llama, to_llama
from seqmodels.testing import assert_rel_close


def tiny_llama(tmp_path, tied=False, kv_heads=2, **extra):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=150, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=128, tie_word_embeddings=tied, **extra,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("tied, kv_heads, bias", [(False, 2, False), (True, 4, False), (False, 1, True)])
def test_from_llama_matches_hf_logits(tmp_path, tied, kv_heads, bias):
    hf = tiny_llama(tmp_path, tied=tied, kv_heads=kv_heads, attention_bias=bias)
    ours = from_llama(tmp_path).eval()
    assert ours.cfg.mlp_hidden == 150 and ours.cfg.kv_heads == kv_heads
    ids = torch.randint(0, 101, (2, 23))
    with torch.no_grad():
        assert_rel_close(ours(ids).logits, hf(ids).logits, 1e-5, "ours vs HF Llama (float32)")


def test_round_trip_is_exact(tmp_path):
    hf = tiny_llama(tmp_path / "a")
    ours = from_llama(tmp_path / "a")
    back = to_llama(ours, tmp_path / "b")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "b").eval()
    ids = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf(ids).logits)
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_float64_conversion_decodes_recurrently(tmp_path):
    tiny_llama(tmp_path)
    ours = from_llama(tmp_path, dtype=torch.float64)
    assert next(ours.parameters()).dtype == torch.float64
    ids = torch.randint(0, 101, (1, 9))
    from seqmodels.testing import check_generate_matches_forward

    check_generate_matches_forward(ours, ids, new_tokens=4)


def test_qwen2_biases(tmp_path):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=False)
    hf = Qwen2ForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    ours = from_llama(tmp_path).eval()
    opts = ours.cfg.options_for("attention")
    assert opts.qkv_bias and not opts.o_bias
    ids = torch.randint(0, 80, (2, 11))
    with torch.no_grad():
        assert_rel_close(ours(ids).logits, hf(ids).logits, 1e-5, "ours vs HF Qwen2")
    with pytest.raises(ValueError, match="qkv_bias != o_bias"):
        to_llama(ours)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        from_llama(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        from_llama(tmp_path / "empty")
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"model_type 'bert' is not a supported Llama-family causal LM"):
        from_llama(tmp_path / "bert")
    tiny_llama(tmp_path / "scaled", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="rope type 'linear' is not supported"):
        from_llama(tmp_path / "scaled")
    LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64).save_pretrained(tmp_path / "noweights")
    with pytest.raises(ValueError, match="could not load the model weights"):
        from_llama(tmp_path / "noweights")
