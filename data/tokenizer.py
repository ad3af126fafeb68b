"""Tokenizers: train a byte-level BPE (`tokenizers`) or load any HF tokenizer directory.

Trained tokenizers are saved as a `transformers.PreTrainedTokenizerFast` directory with
BOS "<|bos|>", EOS "<|endoftext|>" and PAD "<|pad|>" (ids 0, 1, 2). Byte-level with no prefix
space and no added special tokens, so decode(encode(text)) == text for any text.
`tokenizer_hash` identifies a tokenizer by content; packed shards record it (pack.py) and the
loader checks it (loader.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Union

import datasets
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"


def _texts(corpus: Union[datasets.Dataset, Iterable[str]], batch_size: int = 1000):
    if isinstance(corpus, datasets.Dataset):
        for batch in corpus.iter(batch_size=batch_size):
            yield batch["text"]
    else:
        yield from ([t] for t in corpus)


def train_bpe(
    corpus: Union[datasets.Dataset, Iterable[str]],
    vocab_size: int,
    out_dir: Union[str, os.PathLike, None] = None,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (3 special + 256 bytes + merges) on `corpus`
    (a Dataset with a "text" column or an iterable of strings); save it to `out_dir` if given."""
    if not isinstance(vocab_size, int) or vocab_size < 259:
        raise ValueError(f"vocab_size must be an integer >= 259 (3 special tokens + 256 bytes), got {vocab_size!r}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_texts(corpus), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: Union[str, os.PathLike]) -> PreTrainedTokenizerBase:
    """Load an HF tokenizer directory. It must define an EOS token (packing separates documents
    with it); a missing PAD is set to EOS."""
    if not os.path.isdir(path):
        raise ValueError(f"tokenizer directory does not exist: {path}")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} defines no eos_token; packing needs one to separate documents")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_hash(tok: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's canonical JSON (keys sorted, padding/truncation settings removed):
    equal for the same vocabulary, merges, normalizer, pre-tokenizer and special tokens."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer_hash needs a fast tokenizer (with backend_tokenizer), got {type(tok).__name__}")
    spec = json.loads(backend.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
