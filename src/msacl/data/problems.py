"""What can be wrong with a data folder, recorded rather than raised so that every problem can be listed.

Readers and layouts return :class:`Problem` records. :func:`msacl.data.load_split` turns them into a
:class:`~msacl.errors.DataError` (``on_bad_file="error"``), into ``ImageSet.skipped`` entries
(``on_bad_file="skip"``) or into one :class:`DataWarning` per kind of warning; ``msacl check-data``
prints them all.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from msacl.errors import DataError

Severity = Literal["error", "warning"]

# Shown in an error or warning before "... and N more", so that a folder of 2,000 bad files reads well.
MAX_LISTED = 10


class DataWarning(UserWarning):
    """A data problem that does not stop loading (upsampled images, thresholded masks, mixed colour modes)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file or folder.

    Attributes:
        path: the file or folder concerned (a split file may add ``:LINE``).
        message: what is wrong and, where it helps, what to do.
        kind: a short stable tag, e.g. ``"truncated"`` or ``"missing-mask"`` (used in JSON and to group warnings).
        severity: ``"error"`` stops loading under ``on_bad_file="error"``; ``"warning"`` never does.
        skippable: an error about a single file, which ``on_bad_file="skip"`` leaves out; a missing or
            empty folder is not skippable.
    """

    path: str
    message: str
    kind: str
    severity: Severity = "error"
    skippable: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "message": self.message, "kind": self.kind, "severity": self.severity,
                "skippable": self.skippable}


def is_fatal(p: Problem, on_bad_file: str) -> bool:
    return p.severity == "error" and (on_bad_file == "error" or not p.skippable)


def raise_errors(problems: list[Problem], *, hint: str = "") -> None:
    """Raise one DataError naming (up to MAX_LISTED of) the given problems; do nothing if there are none."""
    if not problems:
        return
    lines = [str(p) for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more")
    head = lines[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(lines)
    raise DataError(head + (f"\n{hint}" if hint else ""))


def group_message(kind: str, problems: list[Problem]) -> str:
    """One sentence for several problems of the same kind, naming up to MAX_LISTED files."""
    if len(problems) == 1:
        return str(problems[0])
    listed = "; ".join(f"{p.path} ({p.message})" for p in problems[:MAX_LISTED])
    more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} files: {_GENERIC.get(kind, kind.replace('-', ' '))}: {listed}{more}"


_GENERIC = {
    "small-image": "smaller than the configured size, upsampled",
    "non-binary-mask": "masks not binary, thresholded at half range",
    "empty-mask": "masks without any lesion pixel",
    "subfolder": "subfolders are not read",
}


def emit_warnings(problems: list[Problem], *, stacklevel: int = 3) -> None:
    """One ``DataWarning`` per kind, naming the files."""
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        if p.severity == "warning":
            by_kind[p.kind].append(p)
    for kind, ps in by_kind.items():
        warnings.warn(group_message(kind, ps), DataWarning, stacklevel=stacklevel)
