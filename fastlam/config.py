"""Typed configs from YAML: nested dataclasses, ``key.sub=value`` overrides, and an error
that names the offending key for anything unknown or mistyped."""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting the user gave (a config key, an override, a file named on the command line)
    that cannot be used. Command lines print it as one line and exit with status 2."""


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# YAML 1.1 (PyYAML) reads `5e-3` and `1e5` as strings (its floats need a dot): a float field
# accepts these spellings, and nothing else that is a string.
_FLOAT_STR = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def _wrong(key: str, tp, value) -> ConfigError:
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _coerce(value, tp, key: str):
    """``value`` checked against (and converted to) the annotation ``tp``; a mismatch is a
    ConfigError naming ``key`` and the expected type."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _wrong(key, tp, value)
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise _wrong(key, tp, value)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):  # True is not 1
            return value
        raise _wrong(key, tp, value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, tp, value)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {_type_name(tp)} ({len(args)} items), got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else typing.Any
        items = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (typing.Any, typing.Any)
        return {_coerce(k, kt, f"{key} key {k!r}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool):
            raise _wrong(key, tp, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and _FLOAT_STR.fullmatch(value.strip()):
            return float(value)
        raise _wrong(key, tp, value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(key, tp, value)
        return value
    if tp in (str, bool) and not isinstance(value, tp):
        raise _wrong(key, tp, value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _wrong(key, tp, value)
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a (partial) dict; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"unknown config key {full!r} (known under {prefix or 'top level'}: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            full = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], full)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) onto a nested dict."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key.sub=value")
        key, raw = ov.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_config_file(path: str | Path, name: str = "--config") -> dict:
    """The mapping in the YAML file ``path``; a ConfigError naming ``name`` and the path when
    it is missing, a folder, binary, empty, not YAML, or not a mapping."""
    path = Path(path)
    what = "a YAML config file (see configs/)"
    if not path.exists():
        raise ConfigError(f"{name}: file not found: {path}; pass {what}")
    if not path.is_file():
        raise ConfigError(f"{name}: {path} is a folder, not a file; pass {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: {path} is a binary file, not YAML text (a checkpoint or a video?); "
                          f"pass {what}") from None
    if not text.strip():
        raise ConfigError(f"{name}: {path} is an empty file; pass {what}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{name}: {path} is not valid YAML ({problem}{where}); pass {what}") from None
    if data is None:  # only comments: every setting at its default
        return {}
    if not isinstance(data, dict):
        first = text.strip().splitlines()[0].strip()
        shown = first if len(first) <= 40 else first[:37] + "..."
        kind = "plain text" if isinstance(data, str) else f"a YAML {type(data).__name__}"
        raise ConfigError(f"{name}: {path} holds {kind} (first line: {shown!r}), not a mapping of settings "
                          f"(key: value lines); pass {what}")
    return data


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None):
    """``cls`` from the YAML file ``path`` (``--config``) with ``overrides`` applied. An error
    caused by the file itself (not by an override) names the file."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    try:
        return from_dict(cls, apply_overrides(copy.deepcopy(data), overrides or []))
    except ConfigError:
        if path is None or not data:
            raise
        try:  # the error path only: is the file wrong on its own?
            from_dict(cls, data)
        except ConfigError as file_error:
            raise ConfigError(f"--config {path}: {file_error}") from None
        except Exception:  # noqa: BLE001 - the file alone may be incomplete; the first error stands
            pass
        raise


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
