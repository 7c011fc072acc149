"""The base of every named layout, and the folder helpers the layouts share."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from msacl.data.listing import Listing, Sample
from msacl.data.problems import Problem
from msacl.data.readers import is_hidden
from msacl.runs import make_generator

SPLITS = ("train", "val", "test")


@dataclass
class Layout:
    """Base class. Subclasses are dataclasses whose fields are the layout's parameters."""

    name: ClassVar[str] = "layout"
    #: Image size the papers use for this data set; load_split uses it when image_size is None.
    default_image_size: ClassVar[int | None] = None
    #: Whether ``_list`` handles the val split; when False, asking for val is a "missing-split" problem.
    lists_val: ClassVar[bool] = False

    def available_splits(self, root: Path) -> list[str]:
        return ["train", "test"]

    def list_split(self, root: Path, split: str) -> Listing:
        """The samples of ``split`` under ``root`` and the problems found listing them. A split this layout
        does not have is a problem of the listing; the rest is the layout's ``_list``."""
        check_split(split)
        root = Path(root)
        if split == "val" and not self.lists_val:
            return self._no_split(root, split)
        return self._list(root, Listing(split))

    def _list(self, root: Path, lst: Listing) -> Listing:
        """Fill ``lst`` (its ``split`` is train, test, or val when ``lists_val``) from ``root``."""
        raise NotImplementedError

    def extras(self, root: Path) -> list[tuple[str, str]]:
        """Folders present but not read by any split, as (path, note); reported, never errors."""
        return []

    def params(self) -> dict[str, Any]:
        return {f.name: plain_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def spec(self) -> str:
        """The string that names this layout with its non-default parameters."""
        changed = [f"{f.name}={format_value(getattr(self, f.name))}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != field_default(f)]
        return self.name + (":" + ",".join(changed) if changed else "")

    def _no_split(self, root: Path, split: str) -> Listing:
        lst = Listing(split)
        lst.problems.append(Problem(str(root), f"the {self.name} layout has no '{split}' split "
                                    f"(it has {', '.join(self.available_splits(root))})", "missing-split",
                                    skippable=False))
        return lst


def plain_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def format_value(v: Any) -> str:
    return "+".join(v) if isinstance(v, (tuple, list)) else str(v)


def field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def child_dir(folder: Path, names: tuple[str, ...], *, case_insensitive: bool = False) -> Path | None:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    if case_insensitive and folder.is_dir():
        lower = {n.lower() for n in names}
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if e.is_dir() and e.name.lower() in lower:
                return Path(e.path)
    return None


def find_dirs(root: Path, names: set[str], *, max_depth: int = 5,
               prune: frozenset[str] = frozenset()) -> dict[str, list[Path]]:
    """Folders under ``root`` (``root`` included) whose lower-case name is in ``names``."""
    found: dict[str, list[Path]] = {n: [] for n in names}
    base = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root):
        p = Path(dirpath)
        if p.name.lower() in names:
            found[p.name.lower()].append(p)
        if len(p.parts) - base >= max_depth:
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d) and d.lower() not in prune)
    return found


def seeded_split(pool: list[Sample], n_first: int, n_second: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    g = make_generator(seed)
    perm = torch.randperm(len(pool), generator=g).tolist()
    first = sorted((pool[i] for i in perm[:n_first]), key=lambda s: str(s.path))
    second = sorted((pool[i] for i in perm[n_first:n_first + n_second]), key=lambda s: str(s.path))
    return first, second


def one_dir(found: dict[str, list[Path]], names: tuple[str, ...], root: Path, what: str,
             problems: list[Problem]) -> Path | None:
    hits = [p for n in names for p in found.get(n.lower(), [])]
    if len(hits) > 1:
        problems.append(Problem(str(root), f"{len(hits)} folders could be the {what} ({', '.join(map(str, hits))}); "
                                "keep one", "ambiguous-folder", skippable=False))
        return None
    return hits[0] if hits else None
