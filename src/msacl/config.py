"""Typed configuration: dataclasses loaded from YAML with dotted command-line overrides.

Every configurable part of the pipeline declares a dataclass whose defaults are the papers' settings.
The CLI reads an optional YAML file into it and then applies ``--set a.b=value`` overrides, so a run is
fully described by the resolved config it writes into its run directory.

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Opt:
...     lr: float = 0.01
...     names: list[str] = field(default_factory=lambda: ["a"])
>>> apply_overrides(Opt(), ["lr=0.1", "names=[b, c]"])
Opt(lr=0.1, names=['b', 'c'])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from msacl.errors import MsaclError

T = TypeVar("T")


class ConfigError(MsaclError, ValueError):
    """A configuration file or override that does not fit its dataclass."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a (nested) config dataclass, safe for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:  # Optional[X]: the error names X
            return _coerce(value, rest[0], where)
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build ``cls`` from a mapping, checking every key and type; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {sorted(unknown)}; valid keys are {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def coerce_fields(obj: Any, *, where: str = "") -> None:
    """Check (and convert, as :func:`from_dict` does: ``"200"`` -> 200 for an int) every field of the dataclass
    instance ``obj`` in place, for a dataclass built directly rather than through :func:`from_dict`; a value of
    the wrong type is a ``ConfigError`` naming the field."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{where + '.' if where else ''}{f.name}"
        setattr(obj, f.name, _coerce(getattr(obj, f.name), hints[f.name], name))


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` command-line items as a dict, each value parsed as YAML (``3`` -> 3, ``[8,16]`` -> a list,
    ``true`` -> True, an empty value -> ``""``); a malformed item is a ``ConfigError`` naming ``flag``."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} is not of the form KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML ({e})") from None
    return out


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    return apply_settings(cfg, parse_key_values(overrides, "--set"))


def apply_settings(cfg: T, settings: dict[str, Any]) -> T:
    """Return a copy of ``cfg`` with ``{"key.sub": value}`` applied: the one rule by which ``--set``, config
    files' flags and the CLI's flags reach a config (a flag is an alias of its key, see ``msacl.cli``).

    Every value is checked against its declared type; an unknown key or section is a ``ConfigError`` naming it
    and the valid keys.
    """
    data = to_dict(cfg)
    for key, value in settings.items():
        parts = key.strip().split(".")
        node, tp = data, type(cfg)
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"setting {key!r}: no section {p!r}")
            node, tp = node[p], _field_type(tp, p)
        # A free-form mapping (a dict[str, ...] field such as keyword arguments) takes new keys; the consumer
        # of the mapping checks them.
        free = typing.get_origin(tp) is dict
        if not isinstance(node, dict) or (parts[-1] not in node and not free):
            valid = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"setting {key!r}: unknown key {parts[-1]!r}; valid keys are {valid}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def changed_settings(cls: type, before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The settings of config class ``cls`` that differ between two of its dict forms (``to_dict``), as
    ``(dotted key, before, after)``; sections (dataclass fields) are compared key by key, any other value (a
    free-form mapping included) whole, and a key only one side has is not a change."""
    out: list[tuple[str, Any, Any]] = []

    def walk(tp: Any, a: dict[str, Any], b: dict[str, Any], prefix: str) -> None:
        for k, v in b.items():
            if k not in a:
                continue
            sub = _field_type(tp, k)
            if dataclasses.is_dataclass(sub) and isinstance(a[k], dict) and isinstance(v, dict):
                walk(sub, a[k], v, f"{prefix}{k}.")
            elif a[k] != v:
                out.append((prefix + k, a[k], v))

    walk(cls, before, after, "")
    return out


def _field_type(tp: Any, name: str) -> Any:
    """Declared type of field ``name`` of dataclass ``tp`` (Optional unwrapped); Any when unknown."""
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return Any
    t = typing.get_type_hints(tp).get(name, Any)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(t) if a is not type(None)]
        t = rest[0] if len(rest) == 1 else Any
    return t


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file; a missing file, bad YAML or another top level is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, updated from a YAML file (if given), then from dotted overrides."""
    cfg = cls()
    if path is not None:
        p = Path(path)
        data = read_yaml_mapping(p)
        merged = to_dict(cfg)
        _deep_update(merged, data)
        cfg = from_dict(cls, merged, where=str(p))
    return apply_overrides(cfg, overrides or [])


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
