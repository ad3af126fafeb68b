"""Packed text data for the recipes: find or build (corpus -> tokenizer -> shards) under a cache
directory, then hand out rank-aware resumable loaders (docs/architecture.md §6); and next-token windows over a
plain text file or a packed split, for evaluation.

`data:` section of a run config (`TextDataSettings`):
- `packed`: an existing packed directory (index.json; its tokenizer in `<packed>/tokenizer`
  unless `tokenizer` is given) — nothing is built;
- otherwise the corpus `corpus` (default "stdlib", the embedded default) is tokenized with
  `tokenizer` (an HF tokenizer directory) or a byte-level BPE of `vocab_size` trained on it, and
  packed into `cache_dir/<key>/`, where key hashes every setting that changes the shards and the
  corpus itself (seqmodels.data.corpus.corpus_fingerprint: file list, sizes, mtimes and, up to
  256 MiB, the content), so an edited corpus is rebuilt. Rank 0 builds into a temporary directory
  and renames it when complete (a failed build removes it); the other ranks wait.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch

from seqmodels.atomic import atomic_replace_dir
from seqmodels.run_config import dataclass_from_section
from seqmodels.train.distributed import DistInfo, barrier, broadcast_object

TOKENIZER_DIR = "tokenizer"


@dataclass
class TextDataSettings:
    packed: Optional[str] = None
    corpus: Optional[str] = "stdlib"
    max_bytes: Optional[int] = 20_000_000  # caps the embedded stdlib corpus only
    text_field: str = "text"
    tokenizer: Optional[str] = None
    vocab_size: int = 4096
    seq_len: int = 256
    validation_fraction: float = 0.01
    split_seed: int = 0
    cache_dir: str = ".cache/seqmodels"
    shuffle: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "TextDataSettings":
        return dataclass_from_section(cls, values, "data")

    def build_key(self) -> str:
        from .corpus import corpus_fingerprint

        keyed = {k: v for k, v in asdict(self).items() if k not in ("packed", "cache_dir", "shuffle")}
        if self.tokenizer:
            keyed["tokenizer"] = str(Path(self.tokenizer).resolve())
            keyed["tokenizer_files"] = corpus_fingerprint(self.tokenizer)
        keyed["corpus_content"] = corpus_fingerprint(self.corpus)
        if self.corpus not in (None, "stdlib"):
            keyed["corpus"] = str(Path(self.corpus).resolve())
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def _build(settings: TextDataSettings, out_dir: Path) -> None:
    """Build into a temporary directory of this process's own, then move it to `out_dir` in one
    rename. Two runs building the same cache at once (two jobs, or a grid of runs) each build
    their own copy; the first rename wins and the other run uses the winner's directory."""
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        _build_into(settings, tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the complete `tmp` to `out_dir`; a complete `out_dir` built meanwhile by another process wins."""
    try:
        os.rename(tmp, out_dir)  # atomic; fails when out_dir exists and is not empty
    except OSError:
        if (out_dir / "index.json").is_file():
            print(f"[data] {out_dir} was built by another process meanwhile; using it")
            return
        atomic_replace_dir(tmp, out_dir)  # an incomplete leftover: replace it


def _build_into(settings: TextDataSettings, tmp: Path, out_dir: Path) -> None:
    from .corpus import corpus_stats, load_corpus
    from .pack import pack_corpus
    from .tokenizer import load_tokenizer, train_bpe

    corpus = load_corpus(settings.corpus, text_field=settings.text_field, max_bytes=settings.max_bytes)
    stats = corpus_stats(corpus)
    print(f"[data] corpus {settings.corpus or 'stdlib'}: {stats['documents']} documents, {stats['bytes'] / 1e6:.1f} MB")
    if settings.tokenizer:
        tok = load_tokenizer(settings.tokenizer)
        tok.save_pretrained(str(tmp / TOKENIZER_DIR))
    else:
        print(f"[data] training a byte-level BPE with {settings.vocab_size} tokens")
        tok = train_bpe(corpus, settings.vocab_size, tmp / TOKENIZER_DIR)
    index = pack_corpus(corpus, tok, tmp, settings.seq_len, validation_fraction=settings.validation_fraction,
                        split_seed=settings.split_seed)
    (tmp / "settings.json").write_text(json.dumps(asdict(settings), indent=2))
    _publish(tmp, out_dir)
    splits = {k: v["num_sequences"] for k, v in index["splits"].items()}
    print(f"[data] packed {splits} sequences of {settings.seq_len} tokens into {out_dir}")


class PackedTextData:
    """The packed directory + tokenizer of a run; builds them on first use (rank 0)."""

    def __init__(self, settings: TextDataSettings, dist_info: DistInfo):
        from .loader import read_index
        from .tokenizer import load_tokenizer, tokenizer_hash

        self.settings = settings
        self.dist = dist_info
        if settings.packed:
            self.path = Path(settings.packed)
        else:
            self.path = Path(settings.cache_dir).expanduser() / f"packed-{settings.build_key()}"
            error = None
            if dist_info.is_main and not (self.path / "index.json").is_file():
                try:
                    _build(settings, self.path)
                except Exception as exc:  # tell the waiting ranks instead of leaving them in the barrier
                    error = (isinstance(exc, (ValueError, OSError)), f"{type(exc).__name__}: {exc}")
            barrier()
            error = broadcast_object(error)
            if error:
                user_error, text = error
                raise (ValueError if user_error else RuntimeError)(
                    f"building the packed data under {self.path} failed on rank 0: {text}")
        self.index = read_index(self.path)
        tok_dir = settings.tokenizer if (settings.packed and settings.tokenizer) else self.path / TOKENIZER_DIR
        self.tokenizer = load_tokenizer(tok_dir)
        self.tokenizer_hash = tokenizer_hash(self.tokenizer)
        self.seq_len = int(self.index["seq_len"])

    def train_loader(self, micro_batch_size: int, seed: int):
        from .loader import PackedLoader

        return PackedLoader(self.path, micro_batch_size, split="train", seed=seed, rank=self.dist.rank,
                            world_size=self.dist.world_size, shuffle=self.settings.shuffle,
                            tokenizer_hash=self.tokenizer_hash)

    def eval_batches(self, micro_batch_size: int) -> Optional[Callable[[], Iterable[dict]]]:
        """A factory of the same held-out batches at every eval (None without a validation split)."""
        from .loader import PackedLoader

        if "validation" not in self.index["splits"]:
            return None

        def batches():
            return iter(PackedLoader(self.path, micro_batch_size, split="validation", rank=self.dist.rank,
                                     world_size=self.dist.world_size, shuffle=False, drop_last=True,
                                     tokenizer_hash=self.tokenizer_hash))

        try:  # every rank must run the same number of eval batches (ZeRO-3 gathers in forward)
            batches()
        except ValueError as exc:
            if self.dist.is_main:
                print(f"[data] no eval: {exc}")
            return None
        return batches


def text_windows(tokenizer, path: str | Path, seq_len: int) -> Iterator[torch.Tensor]:
    """Windows [n <= seq_len + 1] over the file's tokens + EOS, stride seq_len (the packing layout:
    every token after the first is a target once; the last, partial window included)."""
    ids = tokenizer(Path(path).read_text(), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    if len(ids) < 2:
        raise ValueError(f"{path} has {len(ids)} token(s); need at least 2 to score a prediction")
    return id_windows(ids, seq_len)


def id_windows(ids, seq_len: int) -> Iterator[torch.Tensor]:
    """Windows [n <= seq_len + 1] over a token-id list, stride seq_len: every id after the first
    is a target exactly once (the last, partial window included)."""
    tokens = torch.as_tensor(ids, dtype=torch.long)
    for start in range(0, len(tokens) - 1, seq_len):
        yield tokens[start:start + seq_len + 1]


def packed_windows(path: str | Path, split: str, tokenizer) -> Iterator[torch.Tensor]:
    """Every window [seq_len + 1] of a packed split, in order (its tokenizer hash must match)."""
    from .loader import PackedDataset
    from .tokenizer import tokenizer_hash

    dataset = PackedDataset(path, split, tokenizer_hash=tokenizer_hash(tokenizer))
    for i in range(len(dataset)):
        yield torch.from_numpy(dataset[i])


def window_batches(windows: Iterable[torch.Tensor], batch_size: int) -> Iterator[dict]:
    """Consecutive windows of equal length stacked into batches of at most batch_size, as aligned
    {"input_ids": w[:, :-1], "labels": w[:, 1:]}."""
    pending: list[torch.Tensor] = []

    def batch() -> dict:
        stacked = torch.stack(pending)
        return {"input_ids": stacked[:, :-1], "labels": stacked[:, 1:]}

    for window in windows:
        if pending and (len(window) != len(pending[0]) or len(pending) == batch_size):
            yield batch()
            pending = []
        pending.append(window)
    if pending:
        yield batch()
