"""Pack a tokenized corpus into fixed-length memory-mapped shards plus a JSON index.

Layout (decision): each split is one token stream = every document's tokens followed by EOS,
documents in corpus order. Sequence i is the window stream[i*seq_len : i*seq_len + seq_len + 1]
(seq_len + 1 tokens, stride seq_len), so input_ids = window[:-1] and labels = window[1:]: every
token after the first is a label exactly once. A shard holds a whole number of windows and
stores its stream slice of n*seq_len + 1 tokens (its last token is the next shard's first).
The tail that does not fill a window is dropped and its size recorded in the index
(`dropped_tail_tokens`); a split too short for one window is an error.

Validation is held out by document: round(validation_fraction * documents) documents
(at least 1 when the fraction is > 0), chosen by a permutation seeded with `split_seed`.

Files in `out_dir`: {split}-{k:05d}.bin (raw little-endian uint16 if the vocabulary fits,
i.e. vocab_size <= 65536, else uint32) and index.json; each is written under a temporary name
then renamed (seqmodels.atomic), index.json last.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import datasets
import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from seqmodels.atomic import atomic_write_bytes

from .tokenizer import tokenizer_hash

INDEX_NAME = "index.json"
FORMAT = "seqmodels.packed/1"


def choose_dtype(vocab_size: int, dtype: str = "auto") -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32; forcing uint16 on a larger
    vocabulary is an error."""
    if dtype not in ("auto", "uint16", "uint32"):
        raise ValueError(f"dtype must be 'auto', 'uint16' or 'uint32', got {dtype!r}")
    fits16 = vocab_size <= 2**16
    if dtype == "uint16" and not fits16:
        raise ValueError(f"dtype='uint16' cannot hold vocab_size={vocab_size} (max id {vocab_size - 1} > 65535); use 'uint32' or 'auto'")
    if dtype == "auto":
        dtype = "uint16" if fits16 else "uint32"
    return np.dtype(dtype)


class _ShardWriter:
    """Accumulates one split's token stream and writes full shards of `seqs_per_shard` windows."""

    def __init__(self, out_dir: Path, split: str, seq_len: int, seqs_per_shard: int, dtype: np.dtype):
        self.out_dir, self.split, self.seq_len, self.dtype = out_dir, split, seq_len, dtype
        self.seqs_per_shard = seqs_per_shard
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.shards: list[dict] = []
        self.documents = 0
        self.num_tokens = 0

    def add(self, tokens: np.ndarray, documents: int) -> None:
        self.pending.append(tokens)
        self.pending_len += len(tokens)
        self.documents += documents
        self.num_tokens += len(tokens)
        full = self.seqs_per_shard * self.seq_len + 1
        while self.pending_len >= full:
            buf = np.concatenate(self.pending)
            self._write(buf[:full], self.seqs_per_shard)
            self.pending, self.pending_len = [buf[full - 1:]], len(buf) - full + 1

    def _write(self, tokens: np.ndarray, num_sequences: int) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        atomic_write_bytes(self.out_dir / name, tokens.astype(self.dtype.newbyteorder("<")).tobytes())
        self.shards.append({"file": name, "num_sequences": int(num_sequences), "num_tokens": int(len(tokens))})

    def finish(self) -> dict:
        buf = np.concatenate(self.pending) if self.pending else np.zeros(0, dtype=np.int64)
        tail_seqs = (len(buf) - 1) // self.seq_len if len(buf) > self.seq_len else 0
        if tail_seqs:
            self._write(buf[: tail_seqs * self.seq_len + 1], tail_seqs)
        num_sequences = sum(s["num_sequences"] for s in self.shards)
        if num_sequences == 0:
            raise ValueError(
                f"the {self.split} split has {self.num_tokens} tokens ({self.documents} documents), fewer than "
                f"seq_len + 1 = {self.seq_len + 1} needed for one sequence; use a larger corpus or a smaller seq_len"
                + (" or validation_fraction" if self.split == "validation" else "")
            )
        used = num_sequences * self.seq_len + 1
        return {
            "documents": self.documents,
            "num_tokens": self.num_tokens,
            "num_tokens_used": used,
            "dropped_tail_tokens": self.num_tokens - used,
            "num_sequences": num_sequences,
            "shards": self.shards,
        }


def _validation_mask(num_documents: int, fraction: float, seed: int) -> np.ndarray:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction!r}")
    mask = np.zeros(num_documents, dtype=bool)
    if fraction == 0.0:
        return mask
    count = max(1, int(round(fraction * num_documents)))
    if count >= num_documents:
        raise ValueError(
            f"validation_fraction={fraction} of {num_documents} documents leaves no training document"
        )
    mask[np.random.default_rng(seed).permutation(num_documents)[:count]] = True
    return mask


def pack_corpus(
    corpus: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Union[str, os.PathLike],
    seq_len: int,
    *,
    validation_fraction: float = 0.0,
    split_seed: int = 0,
    dtype: str = "auto",
    num_proc: Optional[int] = None,
    shard_tokens: int = 2**27,
    progress: bool = True,
) -> dict:
    """Tokenize `corpus` (a Dataset with a "text" column) and write shards + index.json to
    `out_dir` (see module docstring). Returns the index. `num_proc` defaults to min(2, cores);
    `shard_tokens` is the approximate number of tokens per shard file."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be a positive integer, got {shard_tokens!r}")
    if "text" not in corpus.column_names:
        raise ValueError(f"corpus must have a 'text' column, has {corpus.column_names}")
    if len(corpus) == 0:
        raise ValueError("empty corpus: 0 documents")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token; packing separates documents with EOS")
    vocab_size = len(tokenizer)
    np_dtype = choose_dtype(vocab_size, dtype)
    num_proc = num_proc if num_proc is not None else max(1, min(2, os.cpu_count() or 1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eos] for x in ids]}

    tokenized = corpus.map(
        encode, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
        remove_columns=corpus.column_names, desc="tokenize",
    )
    is_val = _validation_mask(len(tokenized), validation_fraction, split_seed)
    seqs_per_shard = max(1, shard_tokens // seq_len)
    writers = {
        "train": _ShardWriter(out, "train", seq_len, seqs_per_shard, np_dtype),
        "validation": _ShardWriter(out, "validation", seq_len, seqs_per_shard, np_dtype),
    }
    table = tokenized.with_format("arrow")
    chunk = 1024
    with tqdm(total=len(tokenized), desc="pack", unit="doc", disable=not progress) as bar:
        for start in range(0, len(tokenized), chunk):
            column = table[start:start + chunk]["ids"].combine_chunks()
            lengths = np.diff(column.offsets.to_numpy())
            flat = column.flatten().to_numpy()
            doc_of_token = np.repeat(np.arange(len(lengths)), lengths)
            val_docs = is_val[start:start + len(lengths)]
            for split, docs in (("train", ~val_docs), ("validation", val_docs)):
                if docs.any():
                    writers[split].add(flat[docs[doc_of_token]], int(docs.sum()))
            bar.update(len(lengths))
    splits = {"train": writers["train"].finish()}
    if is_val.any():
        splits["validation"] = writers["validation"].finish()
    index = {
        "format": FORMAT,
        "layout": "windows of seq_len+1 tokens with stride seq_len; input_ids=window[:-1], labels=window[1:]",
        "seq_len": seq_len,
        "dtype": np_dtype.name,
        "vocab_size": vocab_size,
        "eos_token_id": int(eos),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "documents": len(tokenized),
        "validation_fraction": validation_fraction,
        "split_seed": split_seed,
        "splits": splits,
    }
    atomic_write_bytes(out / INDEX_NAME, json.dumps(index, indent=2).encode("utf-8"))
    return index
