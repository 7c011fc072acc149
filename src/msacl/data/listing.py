"""From folders to a list of samples (image path, label, mask path), with every problem found on the way.

Listing only looks at names and folders; decoding happens later (:mod:`msacl.data.loader`), so a split's
membership never depends on which files happen to decode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from msacl.data.problems import Problem
from msacl.data.readers import is_dicom_file, is_hidden, is_image_file


@dataclass(frozen=True)
class Sample:
    """One image of a split: its file, its label (0 normal, 1 abnormal) and its mask file, if any."""

    path: Path
    label: int
    mask: Path | None = None


@dataclass
class Listing:
    """The samples of one split, before decoding.

    Attributes:
        split: "train", "val" or "test".
        samples: usable samples, normal ones first.
        masks_expected: the split has a mask folder, so every abnormal image needs a mask.
        counts: image files found per class and mask files found ("normal", "abnormal", "masks").
        problems: everything wrong found while listing (bad names, missing masks, missing folders).
    """

    split: str
    samples: list[Sample] = field(default_factory=list)
    masks_expected: bool = False
    counts: dict[str, int] = field(default_factory=lambda: {"normal": 0, "abnormal": 0, "masks": 0})
    problems: list[Problem] = field(default_factory=list)


def scan_images(folder: Path, *, what: str = "images") -> tuple[list[Path], list[Problem]]:
    """Image files directly in ``folder``, sorted by name, and the problems found there.

    Hidden files are ignored. Non-image files and files sharing a stem (``a.png`` beside ``a.jpg``) are
    errors about those files; subfolders are a warning (they are not read). A missing folder, or one with
    no image file, is an error about the folder.
    """
    problems: list[Problem] = []
    if not folder.is_dir():
        what_ = "missing" if not folder.exists() else "not a folder"
        problems.append(Problem(str(folder), f"{what_} (expected a folder of {what})", "missing-folder",
                                skippable=False))
        return [], problems
    files: list[Path] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if is_hidden(e.name):
            continue
        p = Path(e.path)
        if e.is_dir():
            problems.append(Problem(str(p), "subfolder not read (images must lie directly in "
                                    f"{folder.name}/)", "subfolder", severity="warning"))
        elif is_image_file(p):
            files.append(p)
        else:
            problems.append(Problem(str(p), f"not an image file (extension '{p.suffix}')", "not-image"))
    if not files:
        problems.append(Problem(str(folder), f"empty folder (no {what})", "empty-folder", skippable=False))
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(_stem(p), []).append(p)
    dups = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    for stem, ps in dups.items():
        names = " and ".join(p.name for p in ps)
        for p in ps:
            problems.append(Problem(str(p), f"duplicate stem '{stem}': {names} in the same folder; keep one",
                                    "duplicate-stem"))
    files = [p for p in files if _stem(p) not in dups]
    return files, problems


def _stem(p: Path) -> str:
    # "x.dcm" and an extensionless DICOM "x" share the stem "x".
    return p.name if not p.suffix and is_dicom_file(p) else p.stem


def pair_masks(images: list[Path], masks_dir: Path, *, label: int = 1,
               all_stems: set[str] | None = None) -> tuple[list[Sample], list[Problem], int]:
    """Pair each image with the mask of the same stem in ``masks_dir``.

    Returns:
        (samples, problems, number of mask files). An image without a mask is an error about the image; a mask
        without an image is an error about the mask. ``all_stems`` (stems of every image file, including
        ones left out for other reasons) keeps their masks from being reported as orphans too.
    """
    mask_files, problems = scan_images(masks_dir, what="masks")
    masks = {_stem(m): m for m in mask_files}
    samples: list[Sample] = []
    for p in images:
        m = masks.get(_stem(p))
        if m is None:
            problems.append(Problem(str(p), f"no mask with stem '{_stem(p)}' in {masks_dir.parent.name}/"
                                    f"{masks_dir.name}/", "missing-mask"))
        else:
            samples.append(Sample(p, label, m))
    stems = {_stem(p) for p in images} | (all_stems or set())
    for stem, m in masks.items():
        if stem not in stems:
            problems.append(Problem(str(m), f"mask without its image (no image with stem '{stem}' among the "
                                    "abnormal images)", "orphan-mask"))
    return samples, problems, len(mask_files)


def count_images(folder: Path) -> int:
    """Image files anywhere under ``folder`` (for reporting extra folders)."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        n += sum(1 for f in filenames if not is_hidden(f) and is_image_file(Path(dirpath) / f))
    return n
