"""The ``lag`` layout: the LAG glaucoma fundus set as distributed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from msacl.data.layouts.base import Layout, child_dir, find_dirs, one_dir, seeded_split
from msacl.data.listing import Listing, Sample, pair_masks, scan_images
from msacl.data.problems import Problem


@dataclass
class LagLayout(Layout):
    """LAG as distributed: ``non_glaucoma/`` (normal) and ``suspicious_glaucoma/`` (abnormal), each with the
    fundus images in ``image/`` (or directly inside) and optional ``attention_map/``.

    Normal images are split by a seeded permutation into n_train / n_test_normal; every glaucoma image is a
    test image. With ``attention_masks=True`` the ophthalmologists' attention maps (same stem, thresholded at
    half range) are the test masks.

    Papers: 2,343 normal images for training, 800 normal and 1,711 glaucoma for testing; 256 x 256.
    """

    name: ClassVar[str] = "lag"
    default_image_size: ClassVar[int | None] = 256
    n_train: int = 2343
    n_test_normal: int = 800
    seed: int = 0
    attention_masks: bool = False
    _normal_names: ClassVar[tuple[str, ...]] = ("non_glaucoma", "non-glaucoma", "nonglaucoma", "negative")
    _abnormal_names: ClassVar[tuple[str, ...]] = ("suspicious_glaucoma", "glaucoma", "positive")

    def _class_dirs(self, root: Path, problems: list[Problem]) -> tuple[Path | None, Path | None]:
        found = find_dirs(root, {n.lower() for n in self._normal_names + self._abnormal_names}, max_depth=3)
        n = one_dir(found, self._normal_names, root, "non-glaucoma folder", problems)
        a = one_dir(found, self._abnormal_names, root, "glaucoma folder", problems)
        for d, names in ((n, self._normal_names), (a, self._abnormal_names)):
            if d is None and not any(found[x.lower()] for x in names):
                problems.append(Problem(str(root), f"no {names[0]}/ folder found (looked for "
                                        f"{', '.join(names)})", "missing-folder", skippable=False))
        return n, a

    @staticmethod
    def _images_dir(d: Path) -> Path:
        return child_dir(d, ("image", "images")) or d

    def _list(self, root: Path, lst: Listing) -> Listing:
        split = lst.split
        ndir, adir = self._class_dirs(root, lst.problems)
        if ndir is None or adir is None:
            return lst
        normals, probs = scan_images(self._images_dir(ndir), what="non-glaucoma images")
        if split == "train":
            lst.problems += probs
        need = self.n_train + self.n_test_normal
        if len(normals) < need:
            lst.problems.append(Problem(str(ndir), f"{len(normals)} normal images but n_train + n_test_normal = "
                                        f"{need}; pass smaller numbers, e.g. --layout lag:n_train=..,"
                                        "n_test_normal=..", "too-few-images", skippable=False))
            return lst
        train, test = seeded_split([Sample(p, 0) for p in normals], self.n_train, self.n_test_normal, self.seed)
        lst.samples = train if split == "train" else test
        lst.counts["normal"] = len(lst.samples)
        if split == "train":
            return lst
        abnormals, probs = scan_images(self._images_dir(adir), what="glaucoma images")
        lst.problems += probs
        lst.counts["abnormal"] = len(abnormals)
        amap = child_dir(adir, ("attention_map", "attention_maps"))
        if not self.attention_masks:
            lst.samples += [Sample(p, 1) for p in abnormals]
            return lst
        if amap is None:
            lst.problems.append(Problem(str(adir / "attention_map"), "missing (attention_masks=true needs it)",
                                        "missing-folder", skippable=False))
            return lst
        samples, mprobs, n_masks = pair_masks(abnormals, amap)
        lst.samples += samples
        lst.problems += mprobs
        lst.masks_expected = True
        lst.counts["masks"] = n_masks
        return lst
