"""Atomic DeepSpeed checkpoints: write under a temporary tag, rename, then update `latest`.

Layout of a checkpoint directory:

    latest                    text file naming the last committed tag (written tmp -> os.replace)
    global_step<N>/           one committed checkpoint: DeepSpeed's files (model, optimizer,
                              scheduler, ZeRO partitions), rank<r>_train_state.pt per rank
                              (data-loader position, RNG states, trainer counters) and whatever
                              `write_extras` adds (model config, tokenizer)
    .tmp-global_step<N>/      a save in progress; never read, removed at the next start

A process killed at any point leaves `latest` naming a complete checkpoint (or no `latest`):
the tag directory becomes visible only by rename after every rank wrote its files, and `latest`
changes only by an atomic replace afterwards. Commit runs on global rank 0, so multi-node runs
need the checkpoint directory on a shared filesystem (as DeepSpeed's own `latest` does).
Only the last `keep_last` committed checkpoints are kept.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from seqmodels.atomic import TMP_PREFIX, atomic_replace_dir, atomic_write_text
from seqmodels.train.distributed import barrier

LATEST = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for_step(step: int) -> str:
    return f"global_step{step}"


def rank_state_name(rank: int) -> str:
    return f"rank{rank:05d}_train_state.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_latest(ckpt_dir: str | os.PathLike) -> Optional[str]:
    """The committed tag `latest` names, or None when there is no checkpoint yet."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(ckpt_dir) / tag).is_dir():
        raise ValueError(f"{path} names checkpoint {tag!r}, but {Path(ckpt_dir) / tag} does not exist")
    return tag


def committed_tags(ckpt_dir: str | os.PathLike) -> list[str]:
    """Committed tags sorted by step (oldest first)."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir() if p.is_dir() and (m := TAG_PATTERN.match(p.name))]
    return [name for _, name in sorted(found)]


class CheckpointManager:
    """Save/load through a DeepSpeed engine with atomic commit and keep-last-K pruning.

    Every rank calls `save` and `load` (DeepSpeed saves partitions on every rank)."""

    def __init__(self, ckpt_dir: str | os.PathLike, rank: int, keep_last: int = 2):
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be a positive integer, got {keep_last!r}")
        self.dir = Path(ckpt_dir)
        self.rank = rank
        self.keep_last = keep_last

    def clean_incomplete(self) -> None:
        """Remove leftovers of saves that were killed before their commit (rank 0), then sync."""
        if self.rank == 0 and self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.name.startswith(TMP_PREFIX):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        barrier()

    def latest(self) -> Optional[str]:
        return read_latest(self.dir)

    def latest_path(self) -> Optional[Path]:
        tag = self.latest()
        return None if tag is None else self.dir / tag

    def save(self, engine, step: int, client_state: dict, rank_state: dict,
             write_extras: Optional[Callable[[Path], None]] = None) -> Path:
        """Write checkpoint `global_step<step>` and commit it; returns its path."""
        tag = tag_for_step(step)
        tmp_tag = TMP_PREFIX + tag
        tmp_path, final = self.dir / tmp_tag, self.dir / tag
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp_path.exists():
                shutil.rmtree(tmp_path)
        barrier()
        engine.save_checkpoint(str(self.dir), tag=tmp_tag, client_state=client_state, save_latest=False)
        torch.save(rank_state, tmp_path / rank_state_name(self.rank))
        if self.rank == 0 and write_extras is not None:
            write_extras(tmp_path)
        barrier()
        if self.rank == 0:
            self._commit(tmp_path, final, tag)
        barrier()
        return final

    def _commit(self, tmp_path: Path, final: Path, tag: str) -> None:
        if final.exists():
            if self.latest() == tag:  # already committed by an earlier identical save
                shutil.rmtree(tmp_path)
                return
        atomic_replace_dir(tmp_path, final)
        atomic_write_text(self.dir / LATEST, tag)
        self._prune(keep=tag)

    def _prune(self, keep: str) -> None:
        tags = committed_tags(self.dir)
        for old in tags[: max(0, len(tags) - self.keep_last)]:
            if old != keep:
                shutil.rmtree(self.dir / old)

    def load(self, engine, tag: Optional[str] = None) -> tuple[str, dict, dict]:
        """Load `tag` (default: latest) into the engine; returns (tag, client_state, this rank's state)."""
        tag = tag or self.latest()
        if tag is None:
            raise ValueError(f"no checkpoint to resume from in {self.dir} (no {LATEST} file)")
        rank_file = self.dir / tag / rank_state_name(self.rank)
        if not rank_file.is_file():
            saved = sorted(p.name for p in (self.dir / tag).glob("rank*_train_state.pt"))
            raise ValueError(
                f"{rank_file} is missing: checkpoint {tag} was written by {len(saved)} process(es); "
                "resume with the same number of processes"
            )
        path, client_state = engine.load_checkpoint(str(self.dir), tag=tag)
        if path is None:
            raise ValueError(f"DeepSpeed could not load checkpoint {self.dir / tag}")
        rank_state = torch.load(rank_file, weights_only=False)
        return tag, client_state or {}, rank_state
