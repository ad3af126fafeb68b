"""Model configs of every registered causal LM family at one shape, for the benchmark scripts.

Each family starts from its `<preset>-tiny` preset (the preset whose `mixer:` is that family,
so family-specific knobs — head dims, MLP kind, mixer_options — come from its authors), scaled
to `d_model` (head dims scale with it, head counts stay), with `n_layers`, `vocab_size` and
`max_seq_len` set. With `match_params`, the MLP width (mlp_ratio) is searched so every family's
parameter count is within ~2% of the Transformer's ("equal size"). Families are read from the
registry, so a new family appears without editing the scripts; one without a causal LM form
(e.g. a bidirectional vision mixer) is reported as skipped, with the reason.
"""
from __future__ import annotations

from importlib import resources

import yaml

from seqmodels import ModelConfig, SeqLM, mixer_names

BASELINE = "attention"


def _preset_for(mixer: str) -> dict:
    root = resources.files("seqmodels") / "presets"
    found = {}
    for path in root.iterdir():
        if path.name.endswith(".yaml"):
            values = yaml.safe_load(path.read_text()) or {}
            if values.get("mixer") == mixer and "preset" not in values:
                found[path.name[:-5]] = values
    tiny = sorted(name for name in found if name.endswith("-tiny"))
    if tiny:
        return dict(found[tiny[0]])
    return {"mixer": mixer, "d_model": 64, "n_heads": 4}


def family_config(mixer: str, d_model: int, n_layers: int, vocab_size: int, max_seq_len: int,
                  mlp_ratio: float | None = None) -> ModelConfig:
    values = _preset_for(mixer)
    scale = d_model / values.get("d_model", 64)
    values.update(d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, max_seq_len=max_seq_len, name=mixer)
    for key in ("head_dim_k", "head_dim_v"):
        if values.get(key):
            values[key] = int(round(values[key] * scale))
    if mlp_ratio is not None:
        values["mlp_ratio"] = mlp_ratio
    return ModelConfig.from_dict(values)


def count_params(cfg: ModelConfig) -> int:
    import torch

    with torch.device("meta"):
        return SeqLM(cfg).num_parameters()


def family_configs(d_model: int, n_layers: int, vocab_size: int, max_seq_len: int, match_params: bool = True):
    """[(mixer, ModelConfig or None, note)] for every registered mixer, the baseline first."""
    names = sorted(mixer_names(), key=lambda n: (n != BASELINE, n))
    target = count_params(family_config(BASELINE, d_model, n_layers, vocab_size, max_seq_len))
    rows = []
    for name in names:
        try:
            cfg = family_config(name, d_model, n_layers, vocab_size, max_seq_len)
            if cfg.head != "lm":
                rows.append((name, None, f"skipped: head '{cfg.head}' (no causal LM form)"))
                continue
            if match_params and name != BASELINE and cfg.mlp != "none":
                cfg = _match(name, cfg, target, d_model, n_layers, vocab_size, max_seq_len)
            count_params(cfg)
            rows.append((name, cfg, ""))
        except (ValueError, TypeError, NotImplementedError) as exc:
            rows.append((name, None, f"skipped: {exc}"))
    return rows


def _match(name, cfg, target, d_model, n_layers, vocab_size, max_seq_len) -> ModelConfig:
    lo, hi = 0.25, 16.0
    best = cfg
    for _ in range(30):
        mid = (lo + hi) / 2
        trial = family_config(name, d_model, n_layers, vocab_size, max_seq_len, mlp_ratio=mid)
        count = count_params(trial)
        if abs(count - target) < abs(count_params(best) - target):
            best = trial
        if count < target:
            lo = mid
        else:
            hi = mid
    return best
