"""The mixer registry: every token mixer registers itself by name with @register_mixer."""
from __future__ import annotations

from typing import Callable

_MIXERS: dict[str, type] = {}


def register_mixer(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {_MIXERS[name].__qualname__}")
        cls.mixer_name = name
        _MIXERS[name] = cls
        return cls

    return wrap


def _ensure_loaded() -> None:
    import seqmodels.layers  # noqa: F401  (importing the package registers every family)


def get_mixer(name: str) -> type:
    _ensure_loaded()
    if name not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; registered mixers: {sorted(_MIXERS)}")
    return _MIXERS[name]


def mixer_names() -> list[str]:
    _ensure_loaded()
    return sorted(_MIXERS)
