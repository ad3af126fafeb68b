"""Atomic DeepSpeed checkpoints: write under a temporary tag, rename, then update `latest`.

Layout of a checkpoint directory:

    latest                    text file naming the last committed tag (written tmp -> os.replace)
    global_step<N>/           one committed checkpoint: DeepSpeed's files (model, optimizer,
                              scheduler, ZeRO partitions), rank<r>_train_state.pt per rank
                              (data-loader position, RNG states, trainer counters), whatever
                              `write_extras` adds (model config, tokenizer) and manifest.json
                              (sizes and sha256 of every file, process count, parameter shapes)
    .tmp-global_step<N>/      a save in progress; never read, removed at the next start
    damaged-global_step<N>/   a committed checkpoint that failed its manifest check, set aside

A process killed at any point leaves `latest` naming a complete checkpoint (or no `latest`):
the tag directory becomes visible only by rename after every rank wrote its files, and `latest`
changes only by an atomic replace afterwards. Commit runs on global rank 0, so multi-node runs
need the checkpoint directory on a shared filesystem (as DeepSpeed's own `latest` does).
Only the last `keep_last` committed checkpoints are kept.

Resume (`resume_tag`) checks the manifest of the checkpoint `latest` names; a damaged one (a
flipped byte, a truncated, emptied or missing file) or a missing or unreadable `latest` is
reported on stderr and the newest intact checkpoint is used instead, the damaged ones set aside.
Loading never unpickles code (seqmodels.train.safe_load).
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from seqmodels.atomic import TMP_PREFIX, atomic_replace_dir, atomic_write_text
from seqmodels.train.distributed import barrier, broadcast_object
from seqmodels.train.manifest import check_compatible, checkpoint_problem, parameter_shapes, write_manifest
from seqmodels.train.safe_load import safe_torch_load, safe_unpickling

LATEST = "latest"
DAMAGED_PREFIX = "damaged-"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for_step(step: int) -> str:
    return f"global_step{step}"


def rank_state_name(rank: int) -> str:
    return f"rank{rank:05d}_train_state.pt"


def rng_state() -> dict:
    """Every RNG's state as tensors, numbers and tuples (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_latest(ckpt_dir: str | os.PathLike) -> Optional[str]:
    """The committed tag `latest` names, or None when there is no checkpoint yet."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text(errors="replace").strip()
    if not TAG_PATTERN.match(tag):
        raise ValueError(f"{path} does not name a checkpoint (it holds {tag[:40]!r})")
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


def _warn(text: str) -> None:
    print(f"[checkpoint] WARNING: {text}", file=sys.stderr, flush=True)


def intact_tag(ckpt_dir: str | os.PathLike, set_aside: bool = False) -> Optional[str]:
    """The checkpoint to load: the one `latest` names when its manifest checks out, else the newest
    intact one, with a warning naming what is wrong (damaged ones renamed `damaged-<tag>` and
    `latest` rewritten when `set_aside`). None without any checkpoint; ValueError when none is intact."""
    root = Path(ckpt_dir)
    tags = committed_tags(root)
    try:
        named = read_latest(root)
    except ValueError as exc:
        named, problems = None, [str(exc)]
    else:
        problems = [] if named is not None or not tags else [f"{root / LATEST} is missing"]
    if named is None and not tags:
        return None
    candidates = ([named] if named else []) + [t for t in reversed(tags) if t != named]
    damaged = []
    for tag in candidates:
        problem = checkpoint_problem(root / tag)
        if problem is None:
            if problems:
                _warn(f"{'; '.join(problems)}: resuming from {root / tag}, the newest intact checkpoint")
            if set_aside:
                for bad in damaged:
                    target = root / f"{DAMAGED_PREFIX}{bad}"
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(root / bad, target)
                    _warn(f"set aside the damaged checkpoint as {target}")
                if named != tag:
                    atomic_write_text(root / LATEST, tag)
            return tag
        problems.append(f"checkpoint {tag} is damaged: {problem}")
        damaged.append(tag)
    raise ValueError(
        f"no intact checkpoint in {root}: {'; '.join(problems)}. Start a new run dir (another name or "
        "output_dir), or move the checkpoints away to train from scratch"
    )


def _write_failure(exc: BaseException, path: Path) -> Optional[ValueError]:
    """A one-line error for a checkpoint write that failed for lack of space (None for other failures)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ValueError(f"disk full writing {exc.filename or path}: free space (or set output_dir on "
                          "another disk), then resume")
    if isinstance(exc, RuntimeError) and any(s in message for s in ("iostream error", "file write failed",
                                                                     "unexpected pos")):
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
        return ValueError(f"writing checkpoint {path} failed ({message[:80]}); disk full? {free / 2**20:.0f} MiB "
                          "free there: free space (or set output_dir on another disk), then resume")
    return None


class CheckpointManager:
    """Save/load through a DeepSpeed engine with atomic commit and keep-last-K pruning.

    Every rank calls `save` and `load` (DeepSpeed saves partitions on every rank)."""

    def __init__(self, ckpt_dir: str | os.PathLike, rank: int, keep_last: int = 2, world_size: int = 1,
                 trust: bool = False):
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be a positive integer, got {keep_last!r}")
        self.dir = Path(ckpt_dir)
        self.rank = rank
        self.keep_last = keep_last
        self.world_size = world_size
        self.trust = trust  # load DeepSpeed's files with pickle (--trust-checkpoint)

    def clean_incomplete(self) -> None:
        """Remove leftovers of saves that were killed before their commit (rank 0), then sync."""
        if self.rank == 0 and self.dir.is_dir():
            for path in self.dir.iterdir():
                if path.name.startswith(TMP_PREFIX):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        barrier()

    def latest(self) -> Optional[str]:
        return read_latest(self.dir)

    def resume_tag(self) -> Optional[str]:
        """intact_tag, decided on rank 0 (which sets damaged checkpoints aside) and shared with every rank."""
        found = None
        if self.rank == 0:
            try:
                found = ("ok", intact_tag(self.dir, set_aside=True))
            except ValueError as exc:
                found = ("error", str(exc))
        kind, value = broadcast_object(found)
        if kind == "error":
            raise ValueError(value)
        return value

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
        try:
            engine.save_checkpoint(str(self.dir), tag=tmp_tag, client_state=client_state, save_latest=False)
            torch.save(rank_state, tmp_path / rank_state_name(self.rank))
            if self.rank == 0 and write_extras is not None:
                write_extras(tmp_path)
            barrier()
            if self.rank == 0:
                write_manifest(tmp_path, self.world_size, parameter_shapes(engine.module))
                self._commit(tmp_path, final, tag)
        except (OSError, RuntimeError) as exc:
            error = _write_failure(exc, tmp_path)
            if error is None:
                raise
            raise error from exc
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
        """Load `tag` (default: resume_tag) into the engine after checking it was saved by as many
        processes for the same parameter shapes; returns (tag, client_state, this rank's state)."""
        tag = tag or self.resume_tag()
        if tag is None:
            raise ValueError(f"no checkpoint to resume from in {self.dir} (no {LATEST} file)")
        check_compatible(self.dir / tag, engine.module, self.world_size)
        rank_file = self.dir / tag / rank_state_name(self.rank)
        with safe_unpickling(self.trust):
            path, client_state = engine.load_checkpoint(str(self.dir), tag=tag)
        if path is None:
            raise ValueError(f"DeepSpeed could not load checkpoint {self.dir / tag}")
        rank_state = torch.load(rank_file, weights_only=False) if self.trust else safe_torch_load(rank_file)
        return tag, client_state or {}, rank_state
