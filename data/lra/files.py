"""Loaders for Long Range Arena data files (Tay et al. 2020, arXiv 2011.04006) the user already has.

Every loader returns (input_ids, labels) as torch.long tensors; a missing file is a ValueError
naming the file and where it comes from. Formats:
- ListOps (official): `lra_release/listops-1000/basic_{train,val,test}.tsv`, tab-separated with
  a header, columns Source (the nested expression) and Target (0-9); tokenized with
  `listops.VOCAB`, right-padded with 0 to max_length (default 2000).
- Retrieval / AAN (official): `lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv`, no
  header, columns label (e.g. "1.0"), id1, id2, text1, text2; input_ids [N, 2, max_length].
- Text / IMDB: LRA reads IMDB from TensorFlow Datasets (`imdb_reviews`), not from the release,
  so our format is a TSV like ListOps': header Source (review text, no tabs/newlines) and Target
  (0/1). Text and retrieval are byte-level as in LRA: id = UTF-8 byte + 1, pad 0 (vocab 257).
- Image (CIFAR-10, LRA's grayscale variant): our format is an .npz with `images` uint8
  [N, 32, 32] (grayscale) or [N, 32, 32, 3] (converted with tf.image.rgb_to_grayscale's
  weights 0.2989, 0.5870, 0.1140, rounded) and `labels` [N]; input_ids = the 1024 pixel
  intensities (vocab 256) in row-major order.
- Pathfinder: our format is an .npz with `images` uint8 [N, R, R] and `labels` [N] (0/1);
  input_ids = the R*R pixels row-major. The release (`lra_release/pathfinder{32,64,128,256}/`)
  ships PNG files plus metadata; convert them once to this .npz.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Union

import numpy as np
import torch

from . import listops

RELEASE = (
    "the LRA release lra_release.gz (Google Research long-range-arena, "
    "https://github.com/google-research/long-range-arena; https://storage.googleapis.com/long-range-arena/lra_release.gz)"
)
ORIGIN = {
    "listops": f"{RELEASE}, at lra_release/listops-1000/basic_{{train,val,test}}.tsv",
    "retrieval": f"{RELEASE}, at lra_release/tsv_data/new_aan_pairs.{{train,eval,test}}.tsv",
    "text": "IMDB reviews (LRA reads TensorFlow Datasets 'imdb_reviews'), exported as a TSV with columns Source, Target",
    "image": "CIFAR-10, saved as an .npz with keys 'images' [N,32,32(,3)] uint8 and 'labels' [N]",
    "pathfinder": f"{RELEASE}, at lra_release/pathfinder{{32,64,128,256}}/, converted to an .npz with keys 'images' [N,R,R] uint8 and 'labels' [N]",
}
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])


def _existing(path: Union[str, os.PathLike], task: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"LRA {task} file not found: {path}; it comes from {ORIGIN[task]}")
    return path


def _read_tsv(path: Path, columns: int, header: list[str] | None) -> list[list[str]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if header is not None:
        if not rows or rows[0][: len(header)] != header:
            raise ValueError(f"{path} must start with the header {header}, got {rows[0] if rows else 'an empty file'}")
        rows = rows[1:]
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) != columns:
            raise ValueError(f"{path} line {number} has {len(row)} tab-separated columns, expected {columns}")
    return rows


def _bytes_ids(texts: list[str], max_length: int) -> np.ndarray:
    ids = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, text in enumerate(texts):
        data = np.frombuffer(text.encode("utf-8")[:max_length], dtype=np.uint8)
        ids[row, : len(data)] = data.astype(np.int64) + 1
    return ids


def _int_labels(values: list[str], path: Path) -> torch.Tensor:
    try:
        return torch.tensor([int(float(v)) for v in values], dtype=torch.long)
    except ValueError as err:
        raise ValueError(f"{path}: a label is not a number ({err})") from None


def load_listops(path: Union[str, os.PathLike], max_length: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """ListOps TSV -> (input_ids [N, max_length], labels [N])."""
    path = _existing(path, "listops")
    rows = _read_tsv(path, 2, ["Source", "Target"])
    return listops.encode([r[0] for r in rows], max_length), _int_labels([r[1] for r in rows], path)


def load_text(path: Union[str, os.PathLike], max_length: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Text classification TSV (Source, Target) -> byte ids [N, max_length], labels [N]."""
    path = _existing(path, "text")
    rows = _read_tsv(path, 2, ["Source", "Target"])
    return torch.from_numpy(_bytes_ids([r[0] for r in rows], max_length)), _int_labels([r[1] for r in rows], path)


def load_retrieval(path: Union[str, os.PathLike], max_length: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """AAN retrieval TSV -> byte ids [N, 2, max_length] (text1, text2), labels [N]."""
    path = _existing(path, "retrieval")
    rows = _read_tsv(path, 5, None)
    ids = np.stack([_bytes_ids([r[3] for r in rows], max_length), _bytes_ids([r[4] for r in rows], max_length)], axis=1)
    return torch.from_numpy(ids), _int_labels([r[0] for r in rows], path)


def _load_npz(path: Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        missing = {"images", "labels"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks keys {sorted(missing)}; expected 'images' and 'labels' ({ORIGIN[task]})")
        images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: images have dtype {images.dtype}; expected uint8 pixel intensities 0-255")
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_image(path: Union[str, os.PathLike]) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 .npz -> grayscale pixel ids [N, 1024] (0-255), labels [N]."""
    path = _existing(path, "image")
    images, labels = _load_npz(path, "image")
    if images.ndim == 4 and images.shape[1:] == (32, 32, 3):
        images = np.rint(images.astype(np.float64) @ GRAY_WEIGHTS)
    if images.shape[1:] != (32, 32):
        raise ValueError(f"{path}: images have shape {images.shape}; expected [N, 32, 32] or [N, 32, 32, 3]")
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.int64)), torch.from_numpy(labels.astype(np.int64))


def load_pathfinder(path: Union[str, os.PathLike]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pathfinder .npz -> pixel ids [N, R*R] (0-255), labels [N]."""
    path = _existing(path, "pathfinder")
    images, labels = _load_npz(path, "pathfinder")
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{path}: images have shape {images.shape}; expected [N, R, R]")
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
