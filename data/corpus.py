"""Build a plain-text corpus (a `datasets.Dataset` with one "text" column, one row per document).

Sources (`load_corpus(source)`):
- None / "stdlib": the embedded default, text every machine with Python has without download:
  the standard library's own `.py` sources (code and docstrings) under
  `sysconfig.get_paths()["stdlib"]` plus its LICENSE.txt, test folders, site-packages and
  caches excluded, files in sorted relative-path order, capped at `max_bytes` (default 20 MB).
  On CPython 3.11.7 that is 732 documents, 12.1 MB (`corpus_stats(load_corpus())`).
- "pydoc_topics": English prose every Python install ships: the language reference and library
  topics that `help()` shows (`pydoc_data/topics.py`, one document per topic, sorted by topic
  name; CPython 3.11.7: 79 topics, 465k characters). The stdlib corpus contains the same text as
  one `.py` file (string literals), so a model trained on "stdlib" may have seen it.
- a directory: every file in it (recursively, sorted, hidden files skipped) must be of one
  kind: text (.txt/.md; one file = one document), json lines (.jsonl/.json) or parquet.
- a single .txt/.md/.jsonl/.json/.parquet file.
- a directory written by `datasets.Dataset.save_to_disk` (has dataset_info.json/state.json).
Files are read with `datasets.load_dataset("text" | "json" | "parquet", data_files=...)`;
a text or json file that is not UTF-8 text (e.g. a binary file) is refused by name.
Empty documents are dropped; a corpus with no non-empty document is an error.

`corpus_fingerprint(source)` identifies a corpus's content for cache keys: the sorted file list
with sizes and modification times, plus the sha256 of the content when the files total at most
FINGERPRINT_HASH_BYTES (256 MiB; above that, sizes and mtimes only).
"""
from __future__ import annotations

import codecs
import hashlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import Optional, Union

import datasets

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
_EXCLUDED_STDLIB_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
DEFAULT_MAX_BYTES = 20_000_000
FINGERPRINT_HASH_BYTES = 256 * 2**20
_SNIFF_BYTES = 1 << 16


def _visible_files(path: Path) -> list[Path]:
    """Every non-hidden file under directory `path`, sorted."""
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def corpus_fingerprint(source: Union[str, os.PathLike, None]) -> dict:
    """What a corpus (or any file/folder source) holds, for a cache key: see module docstring."""
    if source is None or str(source) == "stdlib":
        return {"stdlib": sysconfig.get_paths()["stdlib"], "python": sys.version}
    if str(source) == PYDOC_TOPICS:
        return {PYDOC_TOPICS: sysconfig.get_paths()["stdlib"], "python": sys.version}
    path = Path(source)
    if not path.exists():
        return {"not_a_path": str(source)}
    files = [path] if path.is_file() else _visible_files(path)
    listing = [(f.relative_to(path).as_posix() if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns)
               for f in files]
    fingerprint = {"files": listing}
    if sum(size for _, size, _ in listing) <= FINGERPRINT_HASH_BYTES:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.read_bytes())
        fingerprint["sha256"] = digest.hexdigest()
    return fingerprint


def _check_text_file(path: Path) -> None:
    """Refuse a file whose first 64 KiB hold a NUL byte or invalid UTF-8 (a binary file)."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        binary = b"\0" in head
    except UnicodeDecodeError:
        binary = True
    if binary:
        raise ValueError(f"corpus file {path} is not UTF-8 text (binary?); remove it from the corpus or convert it")


def stdlib_corpus(max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> datasets.Dataset:
    """The embedded default corpus: the Python standard library's sources (see module docstring).

    Documents are added in sorted path order until the next one would pass `max_bytes`
    (UTF-8 bytes; None = no cap)."""
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [root / "LICENSE.txt"] if (root / "LICENSE.txt").is_file() else []
    py_files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_STDLIB_DIRS]
        py_files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    paths += sorted(py_files, key=lambda p: p.relative_to(root).as_posix())
    texts, total = [], 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        size = len(text.encode("utf-8"))
        if max_bytes is not None and total + size > max_bytes:
            break
        if not text:
            continue
        texts.append(text)
        total += size
    return _check_nonempty(datasets.Dataset.from_dict({"text": texts}), f"the standard library at {root}")


PYDOC_TOPICS = "pydoc_topics"


def pydoc_topics_corpus() -> datasets.Dataset:
    """The "pydoc_topics" corpus: `pydoc_data.topics.topics` (English reference prose), one
    document per topic in sorted topic order."""
    from pydoc_data.topics import topics

    texts = [topics[name] for name in sorted(topics)]
    return _check_nonempty(datasets.Dataset.from_dict({"text": texts}), "pydoc_data/topics.py")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ValueError(f"unsupported file type: {path} (supported: {', '.join(SUPPORTED)}, or a save_to_disk folder)")


def _check_nonempty(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    ds = ds.filter(lambda batch: [bool(t) for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise ValueError(f"empty corpus: no non-empty document in {where}")
    return ds


def _to_text_column(ds: datasets.Dataset, text_field: str, where: str) -> datasets.Dataset:
    if text_field not in ds.column_names:
        raise ValueError(f"text_field {text_field!r} is not a column of {where}; columns: {ds.column_names}")
    ds = ds.select_columns([text_field])
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    return ds


def load_corpus(
    source: Union[str, os.PathLike, None] = None,
    *,
    text_field: str = "text",
    max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
    cache_dir: Optional[str] = None,
) -> datasets.Dataset:
    """Load documents from `source` (see module docstring) as a Dataset with a "text" column.

    `text_field` names the text column of json/parquet/saved datasets; `max_bytes` caps only
    the embedded default; `cache_dir` is passed to `datasets.load_dataset`."""
    if source is None or str(source) == "stdlib":
        return stdlib_corpus(max_bytes)
    if str(source) == PYDOC_TOPICS:
        return pydoc_topics_corpus()
    path = Path(source)
    if not path.exists():
        raise ValueError(f"corpus path does not exist: {path}")
    if path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{path} holds a DatasetDict with splits {list(ds)}; point at one split's folder")
        return _check_nonempty(_to_text_column(ds, text_field, str(path)), str(path))
    if path.is_dir():
        files = _visible_files(path)
        if not files:
            raise ValueError(f"empty corpus: directory {path} has no files")
    else:
        files = [path]
    kinds = {f: _kind(f) for f in files}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"{path} mixes file kinds {sorted(set(kinds.values()))}; use one kind per corpus")
    kind = next(iter(kinds.values()))
    if kind in ("text", "json"):
        for f in files:
            _check_text_file(f)
    data_files = [str(f) for f in files]
    if kind == "text":
        ds = datasets.load_dataset("text", data_files=data_files, sample_by="document", split="train", cache_dir=cache_dir)
    else:
        ds = datasets.load_dataset(kind, data_files=data_files, split="train", cache_dir=cache_dir)
        ds = _to_text_column(ds, text_field, str(path))
    return _check_nonempty(ds, str(path))


def corpus_stats(corpus: datasets.Dataset) -> dict:
    """{"documents": number of documents, "bytes": total UTF-8 bytes of their text}."""
    total = 0
    for batch in corpus.iter(batch_size=1000):
        total += sum(len(t.encode("utf-8")) for t in batch["text"])
    return {"documents": len(corpus), "bytes": total}
