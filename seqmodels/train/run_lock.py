"""One writer per run directory: `run.lock` holds the writer's pid, host and start time.

The lock file is created with O_CREAT | O_EXCL (one winner). A second run on the same directory is
refused with a message naming the holder. A lock left by a process that no longer exists on this
host (killed, crashed) is taken over with a warning; a lock from another host cannot be checked
and is refused with the path to delete once that run is known to be gone. The lock is re-entrant
within a process (a pretrain run locks its directory, its Trainer locks it again) and removed
when the outermost holder exits. Rank 0 takes it; the other ranks learn the outcome.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from seqmodels.train.distributed import broadcast_object

LOCK_FILE = "run.lock"
_held: dict[Path, int] = {}  # lock path -> nesting depth in this process


class RunLockedError(ValueError):
    """Another live process writes to this run directory."""


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {started}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> Optional[dict]:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _create(path: Path) -> bool:
    """Write our lock if none exists; False when another one does."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(me))
    return True


def acquire(run_dir: str | os.PathLike) -> Path:
    """Take the lock of `run_dir` (created if needed) or raise RunLockedError naming the holder."""
    path = Path(run_dir) / LOCK_FILE
    if path in _held:
        _held[path] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path):
            _held[path] = 1
            return path
        holder = _read(path)
        if holder is None:  # being written this instant, or garbage: look again shortly
            time.sleep(0.2)
            holder = _read(path)
        if holder is not None and holder.get("host") == socket.gethostname() and holder["pid"] == os.getpid():
            _held[path] = 1  # ours, left by an earlier run in this process
            return path
        if holder is not None and holder.get("host") != socket.gethostname():
            raise RunLockedError(
                f"{path.parent} is in use by {_describe(holder)}: wait for that run, use another run name/output_dir, "
                f"or delete {path} if that run is gone"
            )
        if holder is not None and _alive(holder["pid"]):
            raise RunLockedError(
                f"{path.parent} is in use by {_describe(holder)}: wait for that run or use another run "
                "name/output_dir"
            )
        what = f"{_describe(holder)}, no longer running" if holder else "unreadable"
        print(f"[run-lock] WARNING: taking over the stale lock {path} ({what})", file=sys.stderr, flush=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise RunLockedError(f"could not take the lock {path}: another process keeps replacing it")


def release(path: Path) -> None:
    depth = _held.get(path, 0) - 1
    if depth > 0:
        _held[path] = depth
        return
    _held.pop(path, None)
    holder = _read(path)
    if holder is not None and holder["pid"] == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, is_main: bool = True) -> Iterator[None]:
    """Hold the lock of `run_dir` on the main rank for the block; every rank raises if it is taken."""
    path, error = None, None
    if is_main:
        try:
            path = acquire(run_dir)
        except RunLockedError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error:
        raise RunLockedError(error)
    try:
        yield
    finally:
        if path is not None:
            release(path)
