"""ModelConfig: the one config dataclass, its validation, YAML I/O and the preset registry.

A model is `mixer: <name>` (every layer the same token mixer) or `layers: [a, b, ...]` (a
hybrid: layer l uses `layers[l % len(layers)]`). Per-family knobs live in
`mixer_options: {<mixer name>: {...}}` and are checked by that family's own `Options`
dataclass, so a typo fails at load time with the valid keys listed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from seqmodels.kernels._validate import check_int
from seqmodels.atomic import atomic_write_text

MLP_CHOICES = ("swiglu", "sglu", "gelu", "none")
NORM_CHOICES = ("rmsnorm", "layernorm")
HEAD_CHOICES = ("lm", "classify")
POOL_CHOICES = ("mean", "last")
BACKEND_CHOICES = ("auto", "torch", "naive", "triton", "fla")


@dataclass
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # GQA for softmax attention; None = n_heads
    head_dim_k: Optional[int] = None  # None = d_model // n_heads
    head_dim_v: Optional[int] = None  # None = d_model // n_heads
    mixer: Optional[str] = "attention"
    layers: Optional[list] = None  # hybrid pattern; overrides `mixer`
    mlp: str = "swiglu"
    mlp_ratio: float = 8 / 3  # hidden = round_up(mlp_ratio * d_model, mlp_multiple_of)
    mlp_multiple_of: int = 16
    mlp_hidden_dim: Optional[int] = None  # exact hidden size (e.g. a loaded checkpoint's); overrides mlp_ratio
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    chunk_size: int = 64
    kernel_backend: str = "auto"
    init_std: float = 0.02
    head: str = "lm"  # "lm" (next-token) or "classify" (sequence classification, LRA)
    num_classes: Optional[int] = None
    pool: str = "mean"  # classification pooling: "mean" over non-pad tokens or "last" token
    mixer_options: dict = field(default_factory=dict)
    name: Optional[str] = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dk(self) -> int:
        return self.head_dim_k or self.d_model // self.n_heads

    @property
    def dv(self) -> int:
        return self.head_dim_v or self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_hidden_dim is not None:
            return self.mlp_hidden_dim
        m = self.mlp_multiple_of
        return m * -(-int(self.mlp_ratio * self.d_model) // m)

    def mixer_for_layer(self, layer_idx: int) -> str:
        if self.layers:
            return self.layers[layer_idx % len(self.layers)]
        return self.mixer

    def mixer_names(self) -> list[str]:
        return sorted({self.mixer_for_layer(i) for i in range(self.n_layers)})

    def options_for(self, mixer_name: str):
        """The family's validated Options dataclass instance for `mixer_name`."""
        from seqmodels.layers.registry import get_mixer

        cls = get_mixer(mixer_name)
        options_cls = getattr(cls, "Options", None)
        given = dict(self.mixer_options.get(mixer_name) or {})
        if options_cls is None:
            if given:
                raise ValueError(f"mixer_options.{mixer_name}: mixer '{mixer_name}' takes no options, got {sorted(given)}")
            return None
        valid = {f.name for f in fields(options_cls)}
        unknown = sorted(set(given) - valid)
        if unknown:
            raise ValueError(
                f"mixer_options.{mixer_name}: unknown option(s) {unknown}; valid options: {sorted(valid)}"
            )
        return options_cls(**given)

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "chunk_size", "mlp_multiple_of"):
            check_int(name, getattr(self, name))
        for name in ("n_kv_heads", "head_dim_k", "head_dim_v", "mlp_hidden_dim"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if (self.head_dim_k is None or self.head_dim_v is None) and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; choose n_heads among "
                f"{[h for h in range(1, self.d_model + 1) if self.d_model % h == 0]} or set head_dim_k/head_dim_v"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.kv_heads}")
        for name, choices in (
            ("mlp", MLP_CHOICES),
            ("norm", NORM_CHOICES),
            ("head", HEAD_CHOICES),
            ("pool", POOL_CHOICES),
            ("kernel_backend", BACKEND_CHOICES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(choices)}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.head == "classify" and (not isinstance(self.num_classes, int) or self.num_classes < 2):
            raise ValueError(f"head='classify' needs num_classes >= 2, got {self.num_classes!r}")
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)) or not self.layers:
                raise ValueError(f"layers must be a non-empty list of mixer names, got {self.layers!r}")
            self.layers = list(self.layers)
        elif not self.mixer:
            raise ValueError("set either mixer: <name> or layers: [<name>, ...]")
        if not isinstance(self.mixer_options, dict):
            raise ValueError(f"mixer_options must be a mapping {{mixer name: {{option: value}}}}, got {self.mixer_options!r}")

        from seqmodels.layers.registry import get_mixer

        used = self.mixer_names()
        for name in used:
            get_mixer(name)  # raises with the registered names
        stray = sorted(set(self.mixer_options) - set(used))
        if stray:
            raise ValueError(f"mixer_options names mixer(s) {stray} that no layer uses; layers use {used}")
        for name in used:
            options = self.options_for(name)
            check = getattr(get_mixer(name), "check_config", None)
            if check is not None:
                check(self, options)

    # --------------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Build from a mapping; a `preset:` key loads that preset first, other keys override it."""
        values = dict(values)
        preset = values.pop("preset", None)
        base = _load_preset_dict(preset) if preset else {}
        base.update(values)
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - valid)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        if preset and "name" not in values:
            base.setdefault("name", preset)
        return cls(**base)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        return cls.from_dict({"preset": name, **overrides})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of ModelConfig fields, got {type(values).__name__}")
        return cls.from_dict(values)

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write atomically (seqmodels.atomic)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# ------------------------------------------------------------------- presets
def _preset_dir():
    return resources.files("seqmodels") / "presets"


def presets() -> list[str]:
    """Names of the shipped presets (seqmodels/presets/<name>.yaml)."""
    return sorted(p.name[: -len(".yaml")] for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def _load_preset_dict(name: str) -> dict:
    names = presets()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; available presets: {names}")
    values = yaml.safe_load((_preset_dir() / f"{name}.yaml").read_text()) or {}
    if "preset" in values:  # a preset may build on another one
        parent = _load_preset_dict(values.pop("preset"))
        parent.update(values)
        values = parent
    return values
