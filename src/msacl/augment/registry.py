"""Strong families by name, as the configs and the CLI spell them."""

from __future__ import annotations

import inspect
from typing import Any

from msacl.augment.base import StrongBase
from msacl.names import STRONG_CLASSES, STRONG_FAMILIES

FAMILIES = STRONG_CLASSES  # name -> class, imported on first use


def build_strong(name: str, **kwargs: Any) -> StrongBase:
    """The strong family ``name`` built with ``kwargs`` (its constructor's keyword arguments).

    >>> build_strong("medmix").num_classes
    4
    >>> build_strong("cutout", max_holes=2).num_classes
    3
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown strong augmentation {name!r}; choose one of {list(STRONG_FAMILIES)}")
    cls: type[StrongBase] = FAMILIES[name]
    params = [n for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        options = ", ".join(params) if params else "none"
        raise ValueError(f"strong augmentation {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {options}")
    return cls(**kwargs)
