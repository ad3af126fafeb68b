"""Deterministic, resumable, rank-aware batches over packed shards (pack.py).

`PackedDataset` memory-maps one split's shards; item i is window i (seq_len + 1 tokens).
`PackedLoader` orders the windows of epoch e by `np.random.default_rng([seed, e]).permutation`
(identity when shuffle=False). With world_size W and batch_size B, global step s takes
perm[s*W*B : (s+1)*W*B] and rank r gets its strided part perm[s*W*B + r : (s+1)*W*B : W], so
the ranks are disjoint and together cover the global batch a single process with batch W*B
would see. Remainder: with drop_last=True (default) an epoch has N // (W*B) steps and the
last N mod (W*B) windows of that epoch's permutation are skipped (a different set each epoch
when shuffling); with drop_last=False every window is used once and the last batch of a rank
may be smaller (ranks may then differ by one batch).

Position = (epoch, step): `state_dict()` after k batches + `load_state_dict` in a fresh loader
continues with exactly the batches an uninterrupted run yields. Iterating runs to the end of
the current epoch and then moves the position to the start of the next one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from .pack import FORMAT, INDEX_NAME


def read_index(path: Union[str, os.PathLike]) -> dict:
    """The index.json of a packed directory."""
    index_path = Path(path) / INDEX_NAME
    if not index_path.is_file():
        raise ValueError(f"no packed data at {path}: {index_path} is missing (write it with seqmodels.data.pack.pack_corpus)")
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path} has format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def check_tokenizer_hash(index: dict, expected_hash: str, where: str) -> None:
    if index["tokenizer_hash"] != expected_hash:
        raise ValueError(
            f"tokenizer hash mismatch: the shards at {where} were packed with tokenizer {index['tokenizer_hash']}, "
            f"but the given tokenizer hashes to {expected_hash}; re-pack the corpus with this tokenizer "
            "(seqmodels.data.pack.pack_corpus) or train with the tokenizer the shards were packed with"
        )


class PackedDataset:
    """Windows of seq_len + 1 tokens of one split, memory-mapped; `dataset[i]` -> int64 array."""

    def __init__(self, path: Union[str, os.PathLike], split: str = "train", tokenizer_hash: Optional[str] = None):
        self.path = Path(path)
        self.index = read_index(path)
        if tokenizer_hash is not None:
            check_tokenizer_hash(self.index, tokenizer_hash, str(path))
        if split not in self.index["splits"]:
            raise ValueError(f"split {split!r} is not in {self.path / INDEX_NAME}; splits: {list(self.index['splits'])}")
        self.split = split
        self.seq_len = self.index["seq_len"]
        dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self.shards = []
        for shard in self.index["splits"][split]["shards"]:
            file = self.path / shard["file"]
            if not file.is_file():
                raise ValueError(f"shard {file} listed in {self.path / INDEX_NAME} is missing")
            tokens = np.memmap(file, dtype=dtype, mode="r")
            if len(tokens) != shard["num_tokens"]:
                raise ValueError(f"shard {file} has {len(tokens)} tokens, index says {shard['num_tokens']}")
            self.shards.append(tokens)
        counts = [s["num_sequences"] for s in self.index["splits"][split]["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        offset = (i - int(self.starts[shard])) * self.seq_len
        return np.asarray(self.shards[shard][offset:offset + self.seq_len + 1], dtype=np.int64)


class PackedLoader:
    """Batches {"input_ids", "labels"} (torch.long, [batch, seq_len]) over a PackedDataset."""

    def __init__(
        self,
        path: Union[str, os.PathLike],
        batch_size: int,
        *,
        split: str = "train",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        tokenizer_hash: Optional[str] = None,
    ):
        for name, value in (("batch_size", batch_size), ("world_size", world_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
        self.dataset = PackedDataset(path, split, tokenizer_hash)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        n, global_batch = len(self.dataset), batch_size * world_size
        self.steps_per_epoch = n // global_batch if drop_last else -(-n // global_batch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"split {split!r} has {n} sequences, fewer than batch_size*world_size={global_batch}; "
                "use a smaller batch or drop_last=False"
            )
        self.epoch, self.step = 0, 0

    def __len__(self) -> int:
        """Batches per epoch (for this rank)."""
        return self.steps_per_epoch

    def rank_indices(self, epoch: int) -> np.ndarray:
        """The window indices this rank reads in `epoch`, in order."""
        n = len(self.dataset)
        perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            perm = perm[: self.steps_per_epoch * self.batch_size * self.world_size]
        return perm[self.rank::self.world_size]

    def __iter__(self) -> Iterator[dict]:
        indices = self.rank_indices(self.epoch)
        while self.step < self.steps_per_epoch:
            chosen = indices[self.step * self.batch_size:(self.step + 1) * self.batch_size]
            self.step += 1
            if len(chosen) == 0:  # drop_last=False: this rank has no window left at the last step
                break
            windows = torch.from_numpy(np.stack([self.dataset[int(i)] for i in chosen]))
            yield {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}
        self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """Position and settings; the end of an epoch is saved as the start of the next one."""
        epoch, step = (self.epoch + 1, 0) if self.step >= self.steps_per_epoch else (self.epoch, self.step)
        return {
            "epoch": epoch, "step": step, "seed": self.seed, "batch_size": self.batch_size,
            "rank": self.rank, "world_size": self.world_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
            "tokenizer_hash": self.dataset.index["tokenizer_hash"], "num_sequences": len(self.dataset),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the sampling settings must match the saved ones."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "rank", "world_size", "shuffle", "drop_last", "tokenizer_hash", "num_sequences"):
            if state.get(key) != mine[key]:
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this loader has {key}={mine[key]!r}; resume with the same settings and data")
        if not 0 <= state["step"] < self.steps_per_epoch:
            raise ValueError(f"loader state step={state['step']} is outside [0, {self.steps_per_epoch})")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
