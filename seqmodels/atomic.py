"""Atomic file and directory writes: readers see the old content or the new, never a part.

A file is written to a temporary name in its own directory (so the rename stays on one
filesystem), flushed and fsync'ed, renamed over the target with `os.replace` (atomic on POSIX),
and the directory is fsync'ed so the rename survives a power cut. A failed write removes its
temporary file and leaves the target untouched. Temporary names start with `TMP_PREFIX`, the
prefix the checkpoint cleaner removes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (parent directories created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the complete directory `tmp` to `final`, replacing what was there.

    The old `final` is renamed aside first and removed after the swap, so a crash in between leaves
    either the old or the new directory under `final` (and at most a `.old-<name>` leftover)."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final
