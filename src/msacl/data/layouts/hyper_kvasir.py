"""The ``hyper-kvasir`` layout: Hyper-Kvasir as downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from msacl.data.layouts.base import Layout, find_dirs, one_dir, seeded_split
from msacl.data.listing import Listing, Sample, pair_masks, scan_images
from msacl.data.problems import Problem
from msacl.runs import make_generator


@dataclass
class HyperKvasirLayout(Layout):
    """Hyper-Kvasir as downloaded: normal = the ``cecum``, ``ileum`` and ``bbps-2-3`` class folders
    (under labeled-images/lower-gi-tract/...), split by a seeded permutation into n_train / n_test_normal;
    abnormal = segmented-images/images with masks segmented-images/masks (test only).

    Papers: 2,100 normal images, 1,600 for training and 500 for testing; 1,000 polyps with masks; 256 x 256.
    """

    name: ClassVar[str] = "hyper-kvasir"
    default_image_size: ClassVar[int | None] = 256
    n_train: int = 1600
    n_test_normal: int = 500
    n_abnormal: int | None = None  # None: all segmented images
    seed: int = 0
    classes: tuple[str, ...] = ("cecum", "ileum", "bbps-2-3")

    def _normal_pool(self, root: Path) -> tuple[list[Sample], list[Problem], dict[str, int]]:
        problems: list[Problem] = []
        found = find_dirs(root, {c.lower() for c in self.classes},
                           prune=frozenset({"unlabeled-images", "segmented-images", "labeled-videos"}))
        pool: list[Sample] = []
        per_class: dict[str, int] = {}
        for c in self.classes:
            d = one_dir(found, (c,), root, f"'{c}' class folder", problems)
            if d is None:
                if not found.get(c.lower()):
                    problems.append(Problem(str(root), f"no '{c}' class folder found (expected "
                                            f"labeled-images/lower-gi-tract/.../{c}/; or choose the classes, e.g. "
                                            f"--layout hyper-kvasir:classes=cecum+bbps-2-3)", "missing-folder",
                                            skippable=False))
                continue
            files, probs = scan_images(d, what=f"{c} images")
            problems += probs
            per_class[c] = len(files)
            pool += [Sample(p, 0) for p in files]
        return pool, problems, per_class

    def _list(self, root: Path, lst: Listing) -> Listing:
        split = lst.split
        pool, problems, per_class = self._normal_pool(root)
        if split == "train":
            lst.problems += problems
        elif any(not p.skippable for p in problems):
            lst.problems += [p for p in problems if not p.skippable]
        need = self.n_train + self.n_test_normal
        if not any(not p.skippable for p in problems) and len(pool) < need:
            counts = ", ".join(f"{c}: {n}" for c, n in per_class.items())
            lst.problems.append(Problem(str(root), f"{len(pool)} normal images ({counts}) but n_train + "
                                        f"n_test_normal = {need}; pass smaller numbers, e.g. --layout "
                                        f"hyper-kvasir:n_train={int(len(pool) * 0.76)},"
                                        f"n_test_normal={len(pool) - int(len(pool) * 0.76)}",
                                        "too-few-images", skippable=False))
            return lst
        train, test = seeded_split(pool, self.n_train, self.n_test_normal, self.seed)
        lst.samples = train if split == "train" else test
        lst.counts["normal"] = len(lst.samples)
        if split == "train":
            return lst
        found = find_dirs(root, {"segmented-images"}, max_depth=3,
                           prune=frozenset({"unlabeled-images", "labeled-images", "labeled-videos"}))
        seg = one_dir(found, ("segmented-images",), root, "segmented-images folder", lst.problems)
        if seg is None:
            if not found["segmented-images"]:
                lst.problems.append(Problem(str(root), "no segmented-images/ folder (the polyps with masks: "
                                            "segmented-images/images and segmented-images/masks)",
                                            "missing-folder", skippable=False))
            return lst
        images, probs = scan_images(seg / "images", what="polyp images")
        lst.problems += probs
        if self.n_abnormal is not None and self.n_abnormal < len(images):
            g = make_generator(self.seed)
            keep = sorted(torch.randperm(len(images), generator=g)[: self.n_abnormal].tolist())
            images = [images[i] for i in keep]
        samples, mprobs, n_masks = pair_masks(images, seg / "masks")
        if self.n_abnormal is not None:
            mprobs = [p for p in mprobs if p.kind != "orphan-mask"]  # masks of polyps not drawn
        lst.samples += samples
        lst.problems += mprobs
        lst.masks_expected = True
        lst.counts.update(abnormal=len(images), masks=min(n_masks, len(images)))
        return lst
