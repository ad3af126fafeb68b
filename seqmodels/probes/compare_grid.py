"""The family comparison's grid: one model config per causal family (and per hybrid layer
pattern), all at one depth and matched to the baseline's parameter count.

A family starts from its `*-tiny` preset (its authors' knobs: head counts and dims, MLP kind,
mixer_options; seqmodels.benchmark_families.tiny_presets), or from the ModelConfig defaults when
it has none; a hybrid pattern without a preset of its own takes each member's mixer_options from
the member's preset. The shape (d_model, n_layers, vocab_size, max_seq_len) is then set, head
dims scaling with d_model.

Parameter matching (`match_parameters`), deterministic: the target is the baseline's total
parameter count at the shape. A family with an MLP keeps d_model and gets the MLP width (a
multiple of WIDTH_STEP) whose count is closest to the target: the count is affine in the
width, so two counts give the slope and the two multiples around the solution are compared. A
family without an MLP (Mega's block holds its own FFN), or one still off by more than the
tolerance, gets the even d_model in [d/2, 2d] whose count is closest. n_layers is
never changed (equal depth). A family that cannot get within the tolerance fails with its counts.
"""
from __future__ import annotations

from typing import Callable, Optional

from seqmodels.benchmark_families import count_params, tiny_presets
from seqmodels.config import ModelConfig
from seqmodels.layers.registry import get_mixer, mixer_names

SHAPE_KEYS = ("d_model", "n_layers", "vocab_size", "max_seq_len", "name", "mlp_hidden_dim")
D_MODEL_STEP = 2
WIDTH_STEP = 8  # MLP widths are multiples of 8: ~1% of the count per step at d_model 64, 4 layers


def entry_label(entry) -> str:
    """"gla" for a mixer, "base_conv+based" for a layer pattern."""
    return "+".join(entry) if isinstance(entry, (list, tuple)) else entry


def causal_families() -> tuple[list[str], list[str]]:
    """(registered mixers with a causal LM form, ["name: why left out"] for the others)."""
    kept, left_out = [], []
    for name in mixer_names():
        if getattr(get_mixer(name), "causal", True):
            kept.append(name)
        else:
            left_out.append(f"{name}: bidirectional (no causal LM form)")
    return kept, left_out


def grid_entries(grid: dict, baseline: str) -> tuple[list, list[str]]:
    """([mixer name or layer pattern] in training order, notes on left-out families) from the
    `grid:` section: families ("all" or a list), hybrids (layer patterns), exclude (labels)."""
    families, notes = grid["families"], []
    if families == "all":
        families, notes = causal_families()
    elif not isinstance(families, (list, tuple)) or not all(isinstance(f, str) for f in families):
        raise ValueError(f"grid.families must be 'all' or a list of mixer names, got {families!r}")
    hybrids = grid.get("hybrids") or []
    for pattern in hybrids:
        if not (isinstance(pattern, (list, tuple)) and pattern and all(isinstance(n, str) for n in pattern)):
            raise ValueError(f"grid.hybrids: each entry is a list of mixer names, e.g. [base_conv, based]; got {pattern!r}")
    for name in list(families) + [n for p in hybrids for n in p]:
        get_mixer(name)  # an unknown name fails here with the registered names
    exclude = set(grid.get("exclude") or [])
    entries = [f for f in families if f not in exclude] + [list(p) for p in hybrids if entry_label(p) not in exclude]
    labels = [entry_label(e) for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the grid lists a model twice: {labels}")
    entries.sort(key=lambda e: entry_label(e) != baseline)  # the baseline first, the rest in the given order
    return entries, notes


def _preset_for(key: str, presets: dict[str, list[str]]) -> Optional[str]:
    """The family's tiny preset: the only one, or the one named `<key>-tiny` (mega-tiny over mega-chunk-tiny)."""
    names = presets.get(key, [])
    if len(names) == 1:
        return names[0]
    preferred = f"{key.replace('_', '-')}-tiny"
    return preferred if preferred in names else (sorted(names)[0] if names else None)


def _preset_values(preset: str) -> dict:
    return {k: v for k, v in ModelConfig.from_preset(preset).to_dict().items() if v is not None}


def family_values(entry, presets: Optional[dict[str, list[str]]] = None) -> tuple[dict, Optional[str]]:
    """(ModelConfig values before the shape is set, the preset they come from or None);
    `presets`: tiny_presets(), computed when not given."""
    presets = tiny_presets() if presets is None else presets
    label = entry_label(entry)
    preset = _preset_for(label, presets)
    if preset is not None:
        values = _preset_values(preset)
    elif isinstance(entry, (list, tuple)):
        values = {"layers": list(entry), "mixer": None}
        options = {}
        for name in dict.fromkeys(entry):
            member = _preset_for(name, presets)
            if member is not None:
                options.update({k: v for k, v in _preset_values(member).get("mixer_options", {}).items() if k == name})
        if options:
            values["mixer_options"] = options
    else:
        values = {"mixer": entry}
    if isinstance(entry, (list, tuple)):
        values.update(layers=list(entry), mixer=None)
    return values, preset


def shaped_values(base: dict, d_model: int, n_layers: int, vocab_size: int, max_seq_len: int,
                  mlp_hidden_dim: Optional[int] = None, overrides: Optional[dict] = None) -> dict:
    """`base` at a shape: head dims scale with d_model / base d_model; `overrides` (the run's
    `model:` section) on top; mlp_hidden_dim sets the exact MLP width."""
    values = {k: v for k, v in base.items() if k not in SHAPE_KEYS}
    values.update(overrides or {})
    scale = d_model / base.get("d_model", ModelConfig.d_model)
    for key in ("head_dim_k", "head_dim_v"):
        if values.get(key):
            values[key] = max(1, int(round(values[key] * scale)))
    values.update(d_model=d_model, n_layers=n_layers, vocab_size=vocab_size, max_seq_len=max_seq_len)
    if mlp_hidden_dim is not None:
        values["mlp_hidden_dim"] = mlp_hidden_dim
    return values


def _closest(candidates: list[tuple[int, dict]], target: int) -> tuple[int, dict]:
    return min(candidates, key=lambda c: (abs(c[0] - target), c[0]))


def fit_mlp_width(build: Callable[[int], dict], multiple: int, target: int) -> tuple[int, dict]:
    """(count, values) of the MLP width (a positive multiple of `multiple`) closest to `target`;
    `build(width)` gives the values at a width. The count is affine in the width: two counts give
    it, and the chosen width's count is measured again."""
    c1, c2 = count_params(ModelConfig.from_dict(build(multiple))), count_params(ModelConfig.from_dict(build(2 * multiple)))
    slope = (c2 - c1) / multiple
    width = multiple + (target - c1) / slope if slope > 0 else multiple
    below = max(multiple, int(width // multiple) * multiple)
    predicted = {w: c1 + (c2 - c1) * (w - multiple) // multiple for w in (below, below + multiple)}
    best = min(predicted, key=lambda w: (abs(predicted[w] - target), w))
    count = count_params(ModelConfig.from_dict(build(best)))
    if count != predicted[best]:
        raise ValueError(f"the parameter count is not affine in the MLP width ({count:,} at width {best}, "
                         f"{predicted[best]:,} predicted)")
    return count, build(best)


def fit_d_model(build: Callable[[int], dict], d_model: int, target: int) -> tuple[int, dict]:
    """(count, values) of the even d_model in [d/2, 2d] whose count is closest to `target`;
    `build(d)` gives the values at d. The count grows with d, so a bisection over the valid
    d (the config accepts it) finds the two around the target."""
    valid = []
    for d in range(max(D_MODEL_STEP, d_model // 2), 2 * d_model + 1, D_MODEL_STEP):
        try:
            ModelConfig.from_dict(build(d))
        except ValueError:  # e.g. a d_model the heads do not divide
            continue
        valid.append(d)
    if not valid:
        raise ValueError(f"no even d_model in [{d_model // 2}, {2 * d_model}] gives a valid config")
    lo, hi = 0, len(valid) - 1  # invariant: the first d with count >= target is in valid[lo..hi] (or none is)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_params(ModelConfig.from_dict(build(valid[mid]))) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [(count_params(ModelConfig.from_dict(build(valid[i]))), build(valid[i]))
                  for i in sorted({max(lo - 1, 0), lo})]
    return _closest(candidates, target)


def match_parameters(base: dict, d_model: int, n_layers: int, vocab_size: int, max_seq_len: int, target: int,
                     tolerance: float, overrides: Optional[dict] = None) -> tuple[dict, int]:
    """(values, parameter count) of `base` at the shape with the MLP width, else d_model, chosen
    so that the count is closest to `target` (see the module docstring); ValueError when even
    that is more than `tolerance` (relative) away."""
    start = shaped_values(base, d_model, n_layers, vocab_size, max_seq_len, overrides=overrides)
    cfg = ModelConfig.from_dict(start)
    count, values = count_params(cfg), start
    if cfg.mlp != "none":
        count, values = fit_mlp_width(
            lambda w: shaped_values(base, d_model, n_layers, vocab_size, max_seq_len, w, overrides),
            WIDTH_STEP, target)
    if abs(count / target - 1) > tolerance:
        hidden = values.get("mlp_hidden_dim")
        count, values = fit_d_model(
            lambda d: shaped_values(base, d, n_layers, vocab_size, max_seq_len,
                                    None if hidden is None else max(WIDTH_STEP, hidden * d // d_model),
                                    overrides),
            d_model, target)
    if abs(count / target - 1) > tolerance:
        raise ValueError(f"cannot match {target:,} parameters within {tolerance:.0%}: the closest config has "
                         f"{count:,}; change shape.d_model or shape.tolerance, or leave the family out (grid.exclude)")
    return values, count


def non_embedding_parameters(cfg: ModelConfig) -> int:
    """Parameters outside the token embedding and the LM head (counted once when tied)."""
    import torch

    from seqmodels.model import SeqLM

    with torch.device("meta"):
        model = SeqLM(cfg)
    shared = {id(p): p.numel() for m in (model.embed, getattr(model, "lm_head", None)) if m is not None
              for p in m.parameters()}
    return model.num_parameters() - sum(shared.values())


def build_grid(cfg: dict, vocab_size: int, max_seq_len: int) -> tuple[list[dict], list[str]]:
    """([{label, preset, model (ModelConfig dict), parameters, non_embedding_parameters, target}],
    notes) for the run config `cfg`: every entry matched to the baseline's count."""
    shape, baseline = cfg["shape"], cfg["baseline"]
    d_model, n_layers, tolerance = shape["d_model"], shape["n_layers"], float(shape["tolerance"])
    for key, value in (("d_model", d_model), ("n_layers", n_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"shape.{key} must be a positive integer, got {value!r}")
    entries, notes = grid_entries(cfg["grid"], baseline)
    overrides = dict(cfg.get("model") or {})
    presets = tiny_presets()
    base, _ = family_values(baseline, presets)
    target = count_params(ModelConfig.from_dict(shaped_values(base, d_model, n_layers, vocab_size, max_seq_len,
                                                              overrides=overrides)))
    models = []
    for entry in entries:
        label = entry_label(entry)
        base, preset = family_values(entry, presets)
        try:
            values, count = match_parameters(base, d_model, n_layers, vocab_size, max_seq_len, target, tolerance,
                                             overrides)
        except ValueError as exc:
            raise ValueError(f"grid model {label}: {exc}") from None
        model_cfg = ModelConfig.from_dict({**values, "name": label})
        models.append({"label": label, "preset": preset, "model": model_cfg.to_dict(), "parameters": count,
                       "non_embedding_parameters": non_embedding_parameters(model_cfg), "target": target})
    return models, notes
