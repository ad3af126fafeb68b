"""Model configs of every registered causal LM family at one shape, for the benchmark scripts
(scripts/bench_train.py, scripts/bench_decode.py).

Each row starts from one of the family's `*-tiny` presets (a family with several, e.g. Mega and
Mega-chunk, gets one row per preset; family-specific knobs — head dims, MLP kind,
mixer_options — come from its authors), scaled
to `d_model` (head dims scale with it, head counts stay), with `n_layers`, `vocab_size` and
`max_seq_len` set. With `match_params`, the MLP width (mlp_ratio) is searched so every family's
parameter count is within ~2% of the Transformer's ("equal size"). Families are read from the
registry, so a new family appears without editing the scripts; one without a causal LM form
(e.g. a bidirectional vision mixer) is reported as skipped, with the reason.
"""
from __future__ import annotations

from seqmodels import ModelConfig, SeqLM, mixer_names

BASELINE = "attention"


BASELINE_PRESET = "transformer-tiny"


def tiny_presets() -> dict[str, list[str]]:
    """{family key: its "-tiny" presets}; the key is the mixer, or "a+b" for a layer pattern
    (parents resolved, so a preset built on another counts)."""
    from seqmodels.config import presets

    found: dict[str, list[str]] = {}
    for name in presets():
        if name.endswith("-tiny"):
            cfg = ModelConfig.from_preset(name)
            key = "+".join(dict.fromkeys(cfg.layers)) if cfg.layers else cfg.mixer
            found.setdefault(key, []).append(name)
    return found


def _preset_values(mixer: str, preset: str | None) -> dict:
    if preset is None:
        return {"mixer": mixer, "d_model": 64, "n_heads": 4}
    return {k: v for k, v in ModelConfig.from_preset(preset).to_dict().items() if v is not None}


def family_config(mixer: str, d_model: int, n_layers: int, vocab_size: int, max_seq_len: int,
                  mlp_ratio: float | None = None, preset: str | None = None) -> ModelConfig:
    values = _preset_values(mixer, preset)
    scale = d_model / values.get("d_model", 64)
    values.update(d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, max_seq_len=max_seq_len,
                  name=preset or mixer)
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
    """[(label, ModelConfig or None, note)]: one row per "-tiny" preset (label: the mixer or layer
    pattern, plus the preset name when a family has several) and one plain `mixer:` row per
    registered mixer that no preset uses; the Transformer baseline first."""
    tiny = tiny_presets()
    covered = {m for key in tiny for m in key.split("+")}
    plan = [(BASELINE, BASELINE_PRESET)]
    for key in sorted(tiny):
        for preset in tiny[key]:
            if preset != BASELINE_PRESET:
                plan.append((key if len(tiny[key]) == 1 else f"{key} ({preset})", preset))
    plan += [(name, None) for name in mixer_names() if name not in covered]
    target = count_params(family_config(BASELINE, d_model, n_layers, vocab_size, max_seq_len, preset=BASELINE_PRESET))
    rows = []
    for label, preset in plan:
        mixer = label.split(" ")[0]
        try:
            cfg = family_config(mixer, d_model, n_layers, vocab_size, max_seq_len, preset=preset)
            if cfg.head != "lm":
                rows.append((label, None, f"skipped: head '{cfg.head}' (no causal LM form)"))
                continue
            if match_params and label != BASELINE and cfg.mlp != "none":
                cfg = _match(mixer, preset, cfg, target, d_model, n_layers, vocab_size, max_seq_len)
            count_params(cfg)
            rows.append((label, cfg, ""))
        except (ValueError, TypeError, NotImplementedError) as exc:
            rows.append((label, None, f"skipped: {exc}"))
    return rows


def _match(name, preset, cfg, target, d_model, n_layers, vocab_size, max_seq_len) -> ModelConfig:
    lo, hi = 0.25, 16.0
    best = cfg
    for _ in range(30):
        mid = (lo + hi) / 2
        trial = family_config(name, d_model, n_layers, vocab_size, max_seq_len, mlp_ratio=mid, preset=preset)
        count = count_params(trial)
        if abs(count - target) < abs(count_params(best) - target):
            best = trial
        if count < target:
            lo = mid
        else:
            hi = mid
    return best


def select(rows, wanted=None) -> tuple[list, list[str]]:
    """([(label, cfg)] to measure, ["label: why skipped"]) from family_configs rows, keeping only
    the `wanted` labels when given."""
    chosen, notes = [], []
    for label, cfg, note in rows:
        if wanted and label not in wanted:
            continue
        if cfg is None:
            notes.append(f"{label}: {note}")
        else:
            chosen.append((label, cfg))
    return chosen, notes
