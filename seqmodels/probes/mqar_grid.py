"""The MQAR sweep's grid language: every (mixer, task, d_model, lr) run of a sweep config,
validated before any training.

Grid entries of `grid.mixers`: a mixer name ("gla"), a layer pattern ([base_conv, based]; layer
l uses pattern[l mod len]), or a mapping {label: ..., mixer|layers: ..., lrs: [...], <ModelConfig
fields>} for per-mixer settings (n_heads, mixer_options ...) on top of the `model:` section; its
`lrs` replace grid.lrs for that mixer (Zoology tunes the lr per mixer).
"""
from __future__ import annotations

from typing import Optional

from seqmodels.config import ModelConfig


def _non_empty_list(name: str, values) -> list:
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"grid.{name} must be a non-empty list, got {values!r}")
    return list(values)


def _lrs(name: str, values) -> list:
    values = _non_empty_list(name, values)
    for lr in values:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"grid.{name}: {lr!r} is not a positive number")
    return values


def mixer_entry(entry) -> tuple[str, dict, Optional[list]]:
    """(label, ModelConfig overrides, its own lrs or None for grid.lrs) of one grid.mixers entry."""
    if isinstance(entry, str):
        return entry, {"mixer": entry}, None
    if isinstance(entry, (list, tuple)):
        if not entry or not all(isinstance(n, str) for n in entry):
            raise ValueError(f"grid.mixers: a layer pattern must be a non-empty list of mixer names, got {entry!r}")
        return "+".join(entry), {"layers": list(entry), "mixer": None}, None
    if isinstance(entry, dict):
        spec = dict(entry)
        label = spec.pop("label", None)
        lrs = spec.pop("lrs", None)
        if "layers" not in spec and "mixer" not in spec:
            raise ValueError(f"grid.mixers: a mapping entry needs mixer: or layers:, got {entry!r}")
        default_label, base, _ = mixer_entry(spec.pop("layers") if "layers" in spec else spec.pop("mixer"))
        label = label or default_label
        return label, {**spec, **base}, None if lrs is None else _lrs(f"mixers[{label}].lrs", lrs)
    raise ValueError(f"grid.mixers: expected a mixer name, a list of names or a mapping, got {entry!r}")


def _tasks(tasks, vocab_size: int) -> list[tuple[int, int]]:
    parsed = []
    for task in _non_empty_list("tasks", tasks):
        if not (isinstance(task, (list, tuple)) and len(task) == 2 and all(isinstance(v, int) for v in task)):
            raise ValueError(f"grid.tasks: each task is [seq_len, num_kv_pairs], got {task!r}")
        seq_len, pairs = task
        if pairs < 1 or seq_len < 4 * pairs:
            raise ValueError(f"grid.tasks: [{seq_len}, {pairs}]: seq_len must be >= 4 * num_kv_pairs = {4 * pairs} "
                             "(the pairs take 2K positions and the K queries need room)")
        if seq_len % 2:
            raise ValueError(f"grid.tasks: [{seq_len}, {pairs}]: seq_len must be even")
        if vocab_size <= seq_len:
            raise ValueError(f"data.vocab_size={vocab_size} must be > seq_len={seq_len} (grid.tasks)")
        parsed.append((seq_len, pairs))
    return parsed


def build_grid(cfg: dict) -> list[dict]:
    """Every (mixer, task, d_model, lr) run, validated up front (a bad value fails before any training)."""
    grid = cfg["grid"]
    mixers = [mixer_entry(e) for e in _non_empty_list("mixers", grid["mixers"])]
    labels = [label for label, _, _ in mixers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid.mixers: labels must be distinct, got {labels}")
    d_models = _non_empty_list("d_models", grid["d_models"])
    grid_lrs = _lrs("lrs", grid["lrs"])
    for d in d_models:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"grid.d_models: {d!r} is not a positive integer")
    data = cfg["data"]
    tasks = _tasks(grid["tasks"], data["vocab_size"])
    if data["test_examples"] < 1 or data["train_examples"] < 1:
        raise ValueError(f"data.train_examples and data.test_examples must be >= 1, got {data}")
    max_len = max(t[0] for t in tasks)
    runs = []
    for seq_len, pairs in tasks:
        for label, overrides, own_lrs in mixers:
            lrs = own_lrs or grid_lrs
            for d_model in d_models:
                values = {**cfg["model"], **overrides, "d_model": d_model, "vocab_size": data["vocab_size"],
                          "max_seq_len": max(max_len, cfg["model"].get("max_seq_len") or 0)}
                try:
                    model_cfg = ModelConfig.from_dict(values)
                except ValueError as exc:
                    raise ValueError(f"grid cell mixer={label} d_model={d_model}: {exc}") from None
                for lr_index, lr in enumerate(lrs):
                    run_id = f"{label}_T{seq_len}_kv{pairs}_d{d_model}_lr{lr:g}"
                    runs.append({"id": run_id, "mixer": label, "seq_len": seq_len, "num_kv_pairs": pairs,
                                 "d_model": d_model, "lr": float(lr), "model": model_cfg.to_dict(),
                                 "lr_index": lr_index})
    # training order: every cell's first lr before any second lr (so skip_solved_lrs can skip the later
    # ones), and within that the costliest runs (longest sequence x widest model) first, so that ranks
    # taking runs from the queue finish close together
    runs.sort(key=lambda r: (r["lr_index"], -r["seq_len"] * r["d_model"]))
    return runs
