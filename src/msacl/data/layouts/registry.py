"""The named layouts, and a layout from its name with parameters (``"lag:n_train=2000,seed=1"``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from msacl.data.layouts.base import Layout, field_default
from msacl.errors import DataError
from msacl.names import LAYOUT_CLASSES

LAYOUTS = LAYOUT_CLASSES  # name -> layout class, imported on first use


def get_layout(spec: str | Layout) -> Layout:
    """A layout from its name with optional ``key=value`` parameters: ``"lag:n_train=2000,seed=1"``.

    Raises:
        DataError: unknown layout name, parameter or value.
    """
    if isinstance(spec, Layout):
        return spec
    name, _, args = str(spec).partition(":")
    name = name.strip().lower()
    if name not in LAYOUTS:
        raise DataError(f"unknown layout '{name}'; choose from {', '.join(LAYOUTS)}")
    cls = LAYOUTS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise DataError(f"layout '{name}': bad parameter '{item}'; parameters are "
                            f"{', '.join(f'{k}=...' for k in fields) or '(none)'}")
        kwargs[key] = _parse(value.strip(), field_default(fields[key]), f"layout '{name}' parameter {key}")
    return cls(**kwargs)


def _parse(value: str, default: Any, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if default is None:
            return None if value.lower() in ("all", "none", "") else int(value)
        if isinstance(default, tuple):
            return tuple(v.strip() for v in value.split("+") if v.strip())
        return value
    except ValueError as e:
        raise DataError(f"{where}: cannot read {value!r} as {type(default).__name__}") from e
