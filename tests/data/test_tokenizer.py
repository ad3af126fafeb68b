"""Byte-level BPE training, saving/loading and the content hash."""
import pytest

from seqmodels.data.tokenizer import BOS, EOS, PAD, load_tokenizer, tokenizer_hash, train_bpe


def test_trained_tokenizer_round_trips(tokenizer, documents):
    assert len(tokenizer) == 300
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    for doc in documents[:20]:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == doc


def test_save_load_hash(tokenizer, documents, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "t"))
    loaded = load_tokenizer(tmp_path / "t")
    assert tokenizer_hash(loaded) == tokenizer_hash(tokenizer)
    assert len(tokenizer_hash(tokenizer)) == 64
    other = train_bpe(documents, 310)
    assert tokenizer_hash(other) != tokenizer_hash(tokenizer)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 259"):
        train_bpe(["abc"], 100)
    with pytest.raises(ValueError, match="tokenizer directory does not exist"):
        load_tokenizer(tmp_path / "missing")
