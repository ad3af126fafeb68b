"""Run configs for the recipes: `--config run.yaml` plus `--a.b value` overrides (docs/architecture.md §7).

A recipe declares its defaults as a nested mapping; the YAML file and then the command-line
overrides are merged on top. Keys must exist in the defaults (a typo fails with the valid keys
listed), except under "open" sections (e.g. `model`, validated by ModelConfig, or `ds`, the
DeepSpeed JSON overrides) where any key is accepted. Override values are parsed as YAML
(`--train.steps 20`, `--model.layers '[gla, attention]'`, `--train.lr 3e-3`, `--x.y null`).

    cfg = parse_run_args(argv, defaults, open_sections=("model", "ds"), flags={"--resume": ("train.resume", True)})
    print(format_config(cfg))
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

# Arguments the `deepspeed` launcher appends to every process's command line.
LAUNCHER_ARGS = ("--local_rank", "--local-rank")


def parse_value(text: str) -> Any:
    """A command-line value as YAML; numbers YAML 1.1 leaves as strings (3e-3, 1e5) become floats."""
    value = yaml.safe_load(text) if text != "" else ""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def _is_open(path: Sequence[str], open_sections: Iterable[str]) -> bool:
    dotted = ".".join(path)
    return any(dotted == s or dotted.startswith(s + ".") for s in open_sections)


def merge_config(
    base: dict, update: Mapping, open_sections: Iterable[str] = (), where: str = "config", _path: tuple = ()
) -> dict:
    """A copy of `base` with `update` merged in recursively; unknown keys outside open sections
    raise ValueError naming the key, `where` it came from and the valid keys."""
    if not isinstance(update, Mapping):
        raise ValueError(f"{where}: {'.'.join(_path) or 'the top level'} must be a mapping, got {update!r}")
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = _path + (str(key),)
        dotted = ".".join(path)
        if key not in out and not _is_open(path, open_sections):
            raise ValueError(f"{where}: unknown key {dotted!r}; valid keys here: {sorted(out)}")
        if isinstance(out.get(key), dict) and isinstance(value, Mapping):
            out[key] = merge_config(out[key], value, open_sections, where, path)
        elif isinstance(out.get(key), dict) and value is not None and not _is_open(path, open_sections):
            raise ValueError(f"{where}: {dotted} is a section ({sorted(out[key])}); set its keys, e.g. --{dotted}.<key>")
        else:
            out[key] = copy.deepcopy(value) if isinstance(value, Mapping) else value
    return out


def _deep_set(values: dict, parts: list, value: Any) -> dict:
    """A copy of `values` with values[parts[0]][parts[1]]... = value (missing levels created)."""
    out = copy.deepcopy(values)
    node = out
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: file does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping at the top level, got {type(values).__name__}")
    return values


def parse_run_args(
    argv: Optional[Sequence[str]],
    defaults: dict,
    *,
    open_sections: Iterable[str] = (),
    flags: Optional[Mapping[str, tuple]] = None,
) -> dict:
    """Resolve defaults <- `--config` YAML <- `--a.b value` overrides (in command-line order).

    `flags` maps bare switches to an override, e.g. {"--resume": ("train.resume", True)}.
    The launcher's `--local_rank N` is accepted and ignored (ranks come from the environment)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = dict(flags or {})
    open_sections = tuple(open_sections)
    config_path, overrides = None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if not name.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}: use --config run.yaml and --section.key value")
        if name in LAUNCHER_ARGS:
            i += 1 if eq else 2
            continue
        if name in flags and not eq:
            overrides.append(flags[name])
            i += 1
            continue
        if eq:
            value, i = inline, i + 1
        elif i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        else:
            raise ValueError(f"{name} needs a value")
        if name == "--config":
            config_path = value
        else:
            overrides.append((name[2:], parse_value(value)))
    cfg = copy.deepcopy(defaults)
    if config_path is not None:
        cfg = merge_config(cfg, load_yaml(config_path), open_sections, where=str(config_path))
    for dotted, value in overrides:
        update = _deep_set({}, dotted.split("."), value) if all(dotted.split(".")) else None
        if update is None:
            raise ValueError(f"bad override --{dotted}: expected --section.key value")
        cfg = merge_config(cfg, update, open_sections, where=f"--{dotted}")
    return cfg


def format_config(cfg: Mapping) -> str:
    """The resolved config as YAML (printed at start, saved next to the run's outputs)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def write_run_config(run_dir: str | os.PathLike, resolved: str) -> Path:
    """Create the run directory and save the resolved config (format_config) as run_config.yaml in it."""
    from seqmodels.atomic import atomic_write_text

    return atomic_write_text(Path(run_dir) / "run_config.yaml", resolved)


def dataclass_from_section(cls, values: Mapping, section: str):
    """`cls(**values)` for the dataclass of a config section; unknown keys name the section."""
    import dataclasses

    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; valid: {sorted(valid)}")
    return cls(**values)


def run_cli(main, tag: str, errors: tuple = (ValueError,)) -> None:
    """Run a recipe's main(); a user error (`errors`) prints one line `[tag] error: ...` and exits 1."""
    import sys

    try:
        main()
    except errors as exc:
        print(f"[{tag}] error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
