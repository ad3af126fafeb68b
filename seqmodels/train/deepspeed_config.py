"""The DeepSpeed JSON of a run: a path, or the name of a file shipped in the repository's
recipes/configs/ (cpu.json, zero1.json, ... zero3_bf16.json), merged with the run config's `ds:`
overrides (e.g. `--ds.gradient_accumulation_steps 4`)."""
from __future__ import annotations

import json
from pathlib import Path

from seqmodels.run_config import merge_config

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "recipes" / "configs"


def resolve_deepspeed_config(name: str, overrides: dict) -> dict:
    """The DeepSpeed JSON at `name` (a path, or a file name under recipes/configs/) merged with `overrides`."""
    path = Path(name)
    if not path.is_file() and (SHIPPED_DIR / name).is_file():
        path = SHIPPED_DIR / name
    if not path.is_file():
        shipped = sorted(p.name for p in SHIPPED_DIR.glob("*.json"))
        raise ValueError(f"deepspeed_config {name!r} not found (as a path or under {SHIPPED_DIR}: {shipped})")
    return merge_config(json.loads(path.read_text()), overrides, open_sections=("",), where="ds")


def micro_batch_size(ds_config: dict) -> int:
    return int(ds_config["train_micro_batch_size_per_gpu"])
