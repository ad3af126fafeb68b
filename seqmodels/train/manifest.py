"""A checkpoint's manifest: what was written, so a damaged copy is caught before it is loaded.

`manifest.json` in a tag directory lists every file under it (relative path, size in bytes,
sha256), the number of processes that wrote it and the shape of every parameter. It is written
last, just before the commit, and checked before a resume or an inference load: a flipped byte,
a truncated or emptied file, or a missing file is named instead of loading silently wrong
weights; a changed model (e.g. a new vocabulary size) or process count is named before DeepSpeed
fails on it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from seqmodels.atomic import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "seqmodels.checkpoint/1"
_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(tag_dir: str | os.PathLike, world_size: int, parameters: dict[str, list[int]]) -> Path:
    """Hash every file under `tag_dir` into its manifest.json (rank 0, after every rank wrote)."""
    tag_dir = Path(tag_dir)
    files = {p.relative_to(tag_dir).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _files(tag_dir)}
    manifest = {"format": FORMAT, "world_size": world_size, "parameters": parameters, "files": files}
    return atomic_write_text(tag_dir / MANIFEST, json.dumps(manifest, indent=1))


def read_manifest(tag_dir: str | os.PathLike) -> dict:
    path = Path(tag_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} is missing (the checkpoint is incomplete or was not written by seqmodels)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest")
    return manifest


def checkpoint_problem(tag_dir: str | os.PathLike) -> Optional[str]:
    """None when every file the manifest lists is there with its size and sha256; else what is wrong."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        return f"{tag_dir} does not exist"
    try:
        manifest = read_manifest(tag_dir)
    except ValueError as exc:
        return str(exc)
    for name, expected in manifest["files"].items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{path} has {size} bytes, the manifest says {expected['bytes']} (truncated or overwritten)"
        if file_sha256(path) != expected["sha256"]:
            return f"{path} does not match its sha256 in the manifest (corrupted)"
    return None


def parameter_shapes(module) -> dict[str, list[int]]:
    """Name -> full shape of every parameter (ZeRO-3 partitions report their full `ds_shape`)."""
    return {name: list(getattr(p, "ds_shape", p.shape)) for name, p in module.named_parameters()}


def check_compatible(tag_dir: str | os.PathLike, module, world_size: Optional[int] = None) -> None:
    """Refuse, naming the difference, a checkpoint saved by another process count or for other shapes."""
    tag_dir = Path(tag_dir)
    manifest = read_manifest(tag_dir)
    saved_world = manifest["world_size"]
    if world_size is not None and saved_world != world_size:
        raise ValueError(
            f"checkpoint {tag_dir} was saved by {saved_world} process(es), this run has {world_size}: "
            f"resume with {saved_world} process(es) (deepspeed --num_gpus {saved_world}), or start a new run dir"
        )
    saved, current = manifest["parameters"], parameter_shapes(module)
    for name in sorted(set(saved) | set(current)):
        if saved.get(name) != current.get(name):
            raise ValueError(
                f"checkpoint {tag_dir} holds {name} with shape {saved.get(name) or 'absent'}, this model has "
                f"{current.get(name) or 'absent'} (the model config or vocabulary changed): "
                "resume needs the same model; start a new run dir (another name or output_dir)"
            )
