"""The DeepSpeed JSON of a run: a path, or the name of a file shipped in the repository's
recipes/configs/ (cpu.json, zero1.json, ... zero3_bf16.json), merged with the run config's `ds:`
overrides (e.g. `--ds.gradient_accumulation_steps 4`).

DeepSpeed ignores top-level keys it does not know (a misspelled `gradient_clipping` trains without
clipping), so `check_deepspeed_keys` refuses them, naming the closest valid key. The valid keys are
the ones DeepSpeed's own config parser reads: `deepspeed.runtime.config.DeepSpeedConfig` runs on a
mapping that records every key looked up. Nested blocks (zero_optimization, bf16, ...) are pydantic
models in DeepSpeed that already refuse unknown fields.
"""
from __future__ import annotations

import difflib
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
    try:
        values = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"deepspeed_config {path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"deepspeed_config {path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno}); "
                         "fix that line") from None
    if not isinstance(values, dict):
        raise ValueError(f"deepspeed_config {path}: expected a JSON object at the top level")
    config = merge_config(values, overrides, open_sections=("",), where="ds")
    check_deepspeed_keys(config, str(path))
    return config


class _RecordingDict(dict):
    """A dict that records every key looked up in it (also through copies and `keys()`)."""

    def __init__(self, values=(), seen=None):
        super().__init__(values)
        self.seen = set() if seen is None else seen

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)

    def keys(self):
        return _RecordingKeys(self)

    def __copy__(self):
        return _RecordingDict(self, self.seen)


class _RecordingKeys:
    def __init__(self, owner: _RecordingDict):
        self.owner = owner

    def __contains__(self, key):
        return key in self.owner

    def __iter__(self):
        return iter(dict.keys(self.owner))

    def __len__(self):
        return dict.__len__(self.owner)


def deepspeed_keys(config: dict) -> set:
    """The top-level keys DeepSpeed's config parser reads for `config`."""
    from deepspeed.runtime.config import DeepSpeedConfig

    recording = _RecordingDict(config)
    try:
        DeepSpeedConfig(recording)
    except Exception as exc:  # DeepSpeed's own checks (batch sizes, pydantic blocks): one line
        raise ValueError(f"DeepSpeed refuses the config: {' '.join(str(exc).split())}") from None
    return recording.seen


def check_deepspeed_keys(config: dict, where: str = "the DeepSpeed config") -> None:
    """Refuse top-level keys DeepSpeed would ignore, naming the closest one it reads."""
    try:
        valid = deepspeed_keys(config)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for key in sorted(set(config) - valid):
        close = difflib.get_close_matches(key, sorted(valid), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see DeepSpeed's configuration documentation"
        raise ValueError(f"{where}: DeepSpeed does not know the key {key!r} (it would be ignored); {hint}")


def micro_batch_size(ds_config: dict) -> int:
    return int(ds_config["train_micro_batch_size_per_gpu"])
