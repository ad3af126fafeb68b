"""Run configs for the recipes: `--config run.yaml` plus `--a.b value` overrides (docs/architecture.md §7).

A recipe declares its defaults as a nested mapping; the YAML file and then the command-line
overrides are merged on top. Keys must exist in the defaults (a typo fails with the valid keys
listed), except under "open" sections (e.g. `model`, validated by ModelConfig, or `ds`, the
DeepSpeed JSON overrides) where any key is accepted. Override values are parsed as YAML
(`--train.steps 20`, `--model.layers '[gla, attention]'`, `--train.lr 3e-3`, `--x.y null`),
except a recipe's `literal` keys (e.g. generate's `--prompt`), taken verbatim as strings.

Types: a value must fit its default's type (int, float, bool) and a dataclass section's field
annotation; a number written as a string (`lr: 3e-3`, which YAML 1.1 reads as text) is converted,
anything else (`weight_decay: heavy`, `lr: .inf`) is refused naming the key.

    cfg = parse_run_args(argv, defaults, open_sections=("model", "ds"), flags={"--resume": ("train.resume", True)})
    print(format_config(cfg))
"""
from __future__ import annotations

import copy
import errno
import math
import os
import typing
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


def _number(dotted: str, value: Any, integer: bool) -> Any:
    """`value` as an int (integer) or a finite float; numeric strings converted; else ValueError naming the key."""
    kind = "an integer" if integer else "a finite number"
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{dotted} must be {kind}, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"{dotted} must be {kind}, got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{dotted} must be {kind}, got {value!r}")
        return int(number)
    return number


def check_type(dotted: str, value: Any, kind: Any) -> Any:
    """`value` checked against `kind` (a type or a typing annotation: int, float, bool, str, list,
    Optional[...], Any) and converted where unambiguous (numeric strings, integral floats)."""
    if kind is Any or kind is typing.Any:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return check_type(dotted, value, options[0]) if len(options) == 1 else value
    if value is None:
        raise ValueError(f"{dotted} must be set (got null)")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{dotted} must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        return _number(dotted, value, integer=kind is int)
    if kind is str:
        if isinstance(value, (Mapping, list, tuple)):
            raise ValueError(f"{dotted} must be a string, got {value!r}")
        return value if isinstance(value, str) or isinstance(value, bool) else str(value)
    if kind is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{dotted} must be a list, got {value!r}")
        return list(value)
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
        default = out.get(key)
        if value is not None and type(default) in (int, float, bool) and not _is_open(path, open_sections):
            try:
                value = check_type(dotted, value, type(default))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
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
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"--config {where}: malformed YAML ({problem}); fix that line") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping at the top level, got {type(values).__name__}")
    return values


def parse_run_args(
    argv: Optional[Sequence[str]],
    defaults: dict,
    *,
    open_sections: Iterable[str] = (),
    flags: Optional[Mapping[str, tuple]] = None,
    literal: Iterable[str] = (),
) -> dict:
    """Resolve defaults <- `--config` YAML <- `--a.b value` overrides (in command-line order).

    `flags` maps bare switches to an override, e.g. {"--resume": ("train.resume", True)};
    `literal` names keys whose command-line values are kept as given (never YAML-parsed).
    The launcher's `--local_rank N` is accepted and ignored (ranks come from the environment)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = dict(flags or {})
    literal = set(literal)
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
            overrides.append((name[2:], value if name[2:] in literal else parse_value(value)))
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
    hints = typing.get_type_hints(cls)
    return cls(**{key: check_type(f"{section}.{key}", value, hints[key]) for key, value in values.items()})


DEBUG_FLAG = "--debug"


def error_line(exc: BaseException) -> Optional[str]:
    """The one-line message of a user-facing error (None: a bug, worth its traceback): ValueError,
    errors marked `user_error = True`, and file-system errors (disk full, permissions, missing files)."""
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"disk full writing{where}: free space (or write to another disk), then rerun (resume picks up)"
        if exc.errno is not None:
            return f"{exc.strerror or exc}:{where or ' (no file name)'}"
    if isinstance(exc, ValueError) or getattr(exc, "user_error", False):
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def run_cli(main, tag: str, errors: tuple = (ValueError,)) -> None:
    """Every recipe's entry point: run main(); a user error (`errors`, or one error_line knows) prints
    one line `[tag] error: ...` and exits 1; `--debug` (removed from sys.argv) shows the traceback."""
    import sys

    debug = DEBUG_FLAG in sys.argv[1:]
    if debug:
        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != DEBUG_FLAG]
    try:
        main()
    except Exception as exc:
        line = error_line(exc) if not isinstance(exc, errors) else error_line(exc) or str(exc)
        if debug or line is None:
            raise
        print(f"[{tag}] error: {line} (--debug shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)
