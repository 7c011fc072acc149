"""The ``folder`` layout (train/normal, test/normal, test/abnormal[, test/masks], optional val/) and ``liu``,
the same tree with the class folder names of Liu et al.'s colonoscopy set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from msacl.data.layouts.base import Layout, child_dir
from msacl.data.listing import Listing, Sample, count_images, pair_masks, scan_images
from msacl.data.problems import Problem
from msacl.data.readers import is_hidden


@dataclass
class FolderLayout(Layout):
    """train/normal, test/normal, test/abnormal[, test/masks] and optionally val/normal, val/abnormal[, val/masks].

    Masks have the stem of their abnormal image (any image extension). Folders other than these are listed as
    extras and not read.
    """

    name: ClassVar[str] = "folder"
    _normal: ClassVar[tuple[str, ...]] = ("normal",)
    _abnormal: ClassVar[tuple[str, ...]] = ("abnormal",)
    _masks: ClassVar[tuple[str, ...]] = ("masks",)
    _case_insensitive: ClassVar[bool] = False
    lists_val: ClassVar[bool] = True

    def available_splits(self, root: Path) -> list[str]:
        return ["train", "val", "test"] if (Path(root) / "val").is_dir() else ["train", "test"]

    def _find(self, folder: Path, names: tuple[str, ...]) -> Path | None:
        return child_dir(folder, names, case_insensitive=self._case_insensitive)

    def _list(self, root: Path, lst: Listing) -> Listing:
        split = lst.split
        sdir = root / split
        if not sdir.is_dir():
            hint = ""
            if self._find(root, self._normal) or self._find(root, self._abnormal):
                hint = f"; {root} looks like a split folder itself: pass the folder above it"
            elif split == "val":
                hint = "; val/ is optional: leave the val split out"
            lst.problems.append(Problem(str(sdir), f"split folder missing (expected {split}/{self._normal[0]}"
                                        + ("" if split == "train" else f" and {split}/{self._abnormal[0]}")
                                        + f"){hint}", "missing-folder", skippable=False))
            return lst
        ndir = self._find(sdir, self._normal)
        if split == "train":
            files, probs = scan_images(ndir or sdir / self._normal[0], what="normal images")
            lst.problems += probs
            lst.samples = [Sample(p, 0) for p in files]
            lst.counts["normal"] = len(files) + sum(p.kind == "duplicate-stem" for p in probs)
            return lst
        adir = self._find(sdir, self._abnormal)
        if ndir is None and adir is None:
            lst.problems.append(Problem(str(sdir), f"no {self._normal[0]}/ and no {self._abnormal[0]}/ folder "
                                        "inside", "missing-folder", skippable=False))
            return lst
        normals: list[Path] = []
        if ndir is None:
            lst.problems.append(Problem(str(sdir / self._normal[0]), "missing: this split has abnormal images "
                                        "only, so image-level AUROC cannot be computed on it", "missing-class",
                                        severity="warning"))
        else:
            normals, probs = scan_images(ndir, what="normal images")
            lst.problems += probs
            lst.counts["normal"] = len(normals) + sum(p.kind == "duplicate-stem" for p in probs)
        lst.samples = [Sample(p, 0) for p in normals]
        if adir is None:
            lst.problems.append(Problem(str(sdir / self._abnormal[0]), "missing: this split has normal images "
                                        "only, so image-level AUROC cannot be computed on it", "missing-class",
                                        severity="warning"))
            return lst
        abnormals, probs = scan_images(adir, what="abnormal images")
        lst.problems += probs
        lst.counts["abnormal"] = len(abnormals) + sum(p.kind == "duplicate-stem" for p in probs)
        mdir = self._find(sdir, self._masks)
        if mdir is None:
            lst.samples += [Sample(p, 1) for p in abnormals]
            return lst
        lst.masks_expected = True
        dup_stems = {Path(p.path).stem for p in probs if p.kind == "duplicate-stem"}
        samples, mprobs, n_masks = pair_masks(abnormals, mdir, all_stems=dup_stems)
        lst.samples += samples
        lst.problems += mprobs
        lst.counts["masks"] = n_masks
        return lst

    def extras(self, root: Path) -> list[tuple[str, str]]:
        root = Path(root)
        out: list[tuple[str, str]] = []
        if not root.is_dir():
            return out
        known = {"train": self._normal, "val": self._normal + self._abnormal + self._masks,
                 "test": self._normal + self._abnormal + self._masks}
        for e in sorted(os.scandir(root), key=lambda e: e.name):
            if not e.is_dir() or is_hidden(e.name):
                continue
            if e.name not in known:
                n = count_images(Path(e.path))
                out.append((e.path, f"not part of any split ({n} images); not read"))
                continue
            for sub in sorted(os.scandir(e.path), key=lambda s: s.name):
                names = {x.lower() for x in known[e.name]} if self._case_insensitive else set(known[e.name])
                name = sub.name.lower() if self._case_insensitive else sub.name
                if sub.is_dir() and not is_hidden(sub.name) and name not in names:
                    n = count_images(Path(sub.path))
                    why = "training uses normal images only" if e.name == "train" else "not a class folder"
                    out.append((sub.path, f"{n} images not read ({why})"))
        return out


@dataclass
class LiuLayout(FolderLayout):
    """Liu et al.'s colonoscopy set: train/normal, test/normal, test/abnormal, images resized to 64 x 64.

    Class folder names are matched case-insensitively and may also be healthy/negative (normal) or
    polyp/polyps/positive (abnormal).
    """

    name: ClassVar[str] = "liu"
    default_image_size: ClassVar[int | None] = 64
    _normal: ClassVar[tuple[str, ...]] = ("normal", "healthy", "negative")
    _abnormal: ClassVar[tuple[str, ...]] = ("abnormal", "polyp", "polyps", "positive")
    _case_insensitive: ClassVar[bool] = True
