"""``check_folder``: decode every file of every split and report counts, sizes, modes, mask coverage and all
problems found (collected, never stopping at the first). ``msacl check-data`` prints the report.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msacl.data.layouts import Layout, get_layout
from msacl.data.loader import decode_listing, split_problems
from msacl.data.problems import Problem
from msacl.errors import DataError

# Per kind, how many problems the text report lists before "... and N more" (all are in the JSON report).
LISTED_PER_KIND = 20


@dataclass
class SplitReport:
    """One split: files found, what they decode to, and its problems."""

    split: str
    counts: dict[str, int]
    usable: int = 0
    sizes: Counter = field(default_factory=Counter)  # "WxH" -> number of images
    modes: Counter = field(default_factory=Counter)  # source colour mode -> number of images
    mask_coverage: float | None = None  # mean lesion fraction over the masks
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "usable": self.usable, "sizes": dict(self.sizes.most_common()),
                "modes": dict(self.modes.most_common()), "mask_coverage": self.mask_coverage,
                "problems": [p.to_dict() for p in self.problems]}


@dataclass
class DataReport:
    """What :func:`check_folder` found. ``ok`` is False when any problem is an error."""

    root: str
    layout: str
    image_size: int | None
    channels: int
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # about the whole folder
    extras: list[tuple[str, str]] = field(default_factory=list)

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems + [p for s in self.splits for p in s.problems]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "layout": self.layout, "image_size": self.image_size, "channels": self.channels,
            "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
            "splits": {s.split: s.to_dict() for s in self.splits},
            "problems": [p.to_dict() for p in self.problems],
            "extras": [{"path": p, "note": n} for p, n in self.extras],
        }

    def _rel(self, path: str) -> str:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return path
        return path if rel.startswith("..") else rel

    def format(self) -> str:
        """The text report ``msacl check-data`` prints."""
        size = f"{self.image_size}x{self.image_size}" if self.image_size else "native size"
        out = [f"Data folder {self.root} (layout {self.layout}; checked at {size}, {self.channels} channel(s))", ""]
        for s in self.splits:
            c = s.counts
            parts = [f"{c.get('normal', 0)} normal"]
            if s.split != "train":
                parts.append(f"{c.get('abnormal', 0)} abnormal")
                parts.append(f"{c['masks']} masks" if c.get("masks") else "no masks")
            total = c.get("normal", 0) + c.get("abnormal", 0)
            usable = "" if s.usable == total else f"  ({s.usable} usable)"
            out.append(f"{s.split}: {', '.join(parts)}{usable}")
            if s.sizes:
                out.append("  sizes: " + ", ".join(f"{k} ({v})" for k, v in s.sizes.most_common(5))
                           + (f", ... ({len(s.sizes)} sizes)" if len(s.sizes) > 5 else ""))
            if s.modes:
                out.append("  modes: " + ", ".join(f"{k} ({v})" for k, v in s.modes.most_common()))
            if s.mask_coverage is not None:
                out.append(f"  mask coverage: {s.mask_coverage:.1%} of pixels are lesion (mean over masks)")
        if self.extras:
            out += ["", "Not read (extras):"]
            out += [f"  {self._rel(p)}: {n}" for p, n in self.extras]
        probs = self.all_problems
        out += ["", "Problems:" if probs else "Problems: none"]
        by_kind: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in probs:
            by_kind[(p.severity, p.kind)].append(p)
        for (sev, kind), ps in sorted(by_kind.items(), key=lambda kv: (kv[0][0] != "error", kv[0][1])):
            for p in ps[:LISTED_PER_KIND]:
                out.append(f"  {sev.upper():7s} {self._rel(p.path)}: {p.message}")
            if len(ps) > LISTED_PER_KIND:
                out.append(f"  {sev.upper():7s} ... and {len(ps) - LISTED_PER_KIND} more '{kind}' (all in --json)")
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "OK" if self.ok else "NOT USABLE as it is"
        out += ["", f"{verdict}: {n_err} error(s), {n_warn} warning(s)"]
        if not self.ok and any(p.skippable for p in self.errors) and all(p.skippable for p in self.errors):
            out.append("Fix the files above, or load with --on-bad-file skip to leave them out.")
        return "\n".join(out)


def check_folder(
    root: str | os.PathLike[str],
    *,
    layout: str | Layout = "folder",
    image_size: int | None = None,
    channels: int = 3,
    splits: list[str] | None = None,
    allow_upsample: bool = True,
    num_workers: int | None = None,
    progress: bool | None = None,
) -> DataReport:
    """Validate a data folder: every file of every split is decoded and checked, every problem collected.

    Args:
        root: the data folder.
        layout: as for :func:`load_split`.
        image_size: the size the data will be loaded at (for the too-small check); None: the layout's default.
        channels: 1 or 3, as it will be loaded.
        splits: the splits to check (default: those the layout has; for ``folder``, val when val/ exists).
        allow_upsample: False makes images smaller than image_size errors instead of warnings.

    Returns:
        A :class:`DataReport`; ``report.ok`` is False when any problem would stop :func:`load_split`.

    Raises:
        DataError: the folder does not exist, or an unknown layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found" if not root.exists() else f"{root}: not a folder")
    lay = get_layout(layout)
    size = image_size if image_size is not None else lay.default_image_size
    report = DataReport(str(root), lay.spec(), size, channels)
    native: dict[str, set[tuple[int, int]]] = {}
    for split in splits or lay.available_splits(root):
        listing = lay.list_split(root, split)
        results = decode_listing(listing, size=size, channels=channels, allow_upsample=allow_upsample, keep=False,
                                 num_workers=num_workers, progress=progress)
        sr = SplitReport(split, dict(listing.counts))
        sr.problems = split_problems(listing, results, root, size=size, channels=channels)
        ok = [r for r in results if r.ok]
        sr.usable = len(ok)
        sr.sizes = Counter(f"{r.native[0]}x{r.native[1]}" for r in ok if r.native)
        sr.modes = Counter(r.mode for r in ok)
        cov = [r.coverage for r in ok if r.coverage is not None]
        sr.mask_coverage = sum(cov) / len(cov) if cov else None
        native[split] = {r.native for r in ok if r.native}
        report.splits.append(sr)
    if size is None:
        single = {s: next(iter(v)) for s, v in native.items() if len(v) == 1}
        if len(set(single.values())) > 1:
            desc = ", ".join(f"{s} {w}x{h}" for s, (w, h) in single.items())
            report.problems.append(Problem(str(root), f"splits differ in image size ({desc}); set an image size "
                                           "(--image-size N)", "mixed-sizes", skippable=False))
    report.extras = lay.extras(root)
    return report
