"""Named layouts: how a data set's own folder tree maps to the train / val / test splits.

``folder`` is the layout of every set in the shared data folder (train/normal, test/normal, test/abnormal,
optional test/masks and val/). The others read the papers' data sets as distributed; where a data set has no
official split, the split is drawn from a seeded permutation whose sizes default to the papers' numbers.
A layout is named by a string with optional parameters, e.g. ``"hyper-kvasir:n_train=1000,seed=1"``.

>>> get_layout("hyper-kvasir:n_train=1000").n_train
1000
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from msacl.data.listing import Listing, Sample, count_images, pair_masks, scan_images
from msacl.data.problems import Problem
from msacl.data.readers import is_hidden
from msacl.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Layout:
    """Base class. Subclasses are dataclasses whose fields are the layout's parameters."""

    name: ClassVar[str] = "layout"
    #: Image size the papers use for this data set; load_split uses it when image_size is None.
    default_image_size: ClassVar[int | None] = None

    def available_splits(self, root: Path) -> list[str]:
        return ["train", "test"]

    def list_split(self, root: Path, split: str) -> Listing:
        raise NotImplementedError

    def extras(self, root: Path) -> list[tuple[str, str]]:
        """Folders present but not read by any split, as (path, note); reported, never errors."""
        return []

    def params(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def spec(self) -> str:
        """The string that names this layout with its non-default parameters."""
        changed = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != _default(f)]
        return self.name + (":" + ",".join(changed) if changed else "")

    def _no_split(self, root: Path, split: str) -> Listing:
        lst = Listing(split)
        lst.problems.append(Problem(str(root), f"the {self.name} layout has no '{split}' split "
                                    f"(it has {', '.join(self.available_splits(root))})", "missing-split",
                                    skippable=False))
        return lst


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _fmt(v: Any) -> str:
    return "+".join(v) if isinstance(v, (tuple, list)) else str(v)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _child(folder: Path, names: tuple[str, ...], *, case_insensitive: bool = False) -> Path | None:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    if case_insensitive and folder.is_dir():
        lower = {n.lower() for n in names}
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if e.is_dir() and e.name.lower() in lower:
                return Path(e.path)
    return None


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

    def available_splits(self, root: Path) -> list[str]:
        return ["train", "val", "test"] if (Path(root) / "val").is_dir() else ["train", "test"]

    def _find(self, folder: Path, names: tuple[str, ...]) -> Path | None:
        return _child(folder, names, case_insensitive=self._case_insensitive)

    def list_split(self, root: Path, split: str) -> Listing:
        _check_split(split)
        root = Path(root)
        lst = Listing(split)
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


def _find_dirs(root: Path, names: set[str], *, max_depth: int = 5,
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


def _seeded_split(pool: list[Sample], n_first: int, n_second: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(pool), generator=g).tolist()
    first = sorted((pool[i] for i in perm[:n_first]), key=lambda s: str(s.path))
    second = sorted((pool[i] for i in perm[n_first:n_first + n_second]), key=lambda s: str(s.path))
    return first, second


def _one_dir(found: dict[str, list[Path]], names: tuple[str, ...], root: Path, what: str,
             problems: list[Problem]) -> Path | None:
    hits = [p for n in names for p in found.get(n.lower(), [])]
    if len(hits) > 1:
        problems.append(Problem(str(root), f"{len(hits)} folders could be the {what} ({', '.join(map(str, hits))}); "
                                "keep one", "ambiguous-folder", skippable=False))
        return None
    return hits[0] if hits else None


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
        found = _find_dirs(root, {c.lower() for c in self.classes},
                           prune=frozenset({"unlabeled-images", "segmented-images", "labeled-videos"}))
        pool: list[Sample] = []
        per_class: dict[str, int] = {}
        for c in self.classes:
            d = _one_dir(found, (c,), root, f"'{c}' class folder", problems)
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

    def list_split(self, root: Path, split: str) -> Listing:
        _check_split(split)
        root = Path(root)
        if split == "val":
            return self._no_split(root, split)
        lst = Listing(split)
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
        train, test = _seeded_split(pool, self.n_train, self.n_test_normal, self.seed)
        lst.samples = train if split == "train" else test
        lst.counts["normal"] = len(lst.samples)
        if split == "train":
            return lst
        found = _find_dirs(root, {"segmented-images"}, max_depth=3,
                           prune=frozenset({"unlabeled-images", "labeled-images", "labeled-videos"}))
        seg = _one_dir(found, ("segmented-images",), root, "segmented-images folder", lst.problems)
        if seg is None:
            if not found["segmented-images"]:
                lst.problems.append(Problem(str(root), "no segmented-images/ folder (the polyps with masks: "
                                            "segmented-images/images and segmented-images/masks)",
                                            "missing-folder", skippable=False))
            return lst
        images, probs = scan_images(seg / "images", what="polyp images")
        lst.problems += probs
        if self.n_abnormal is not None and self.n_abnormal < len(images):
            g = torch.Generator().manual_seed(int(self.seed))
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
        found = _find_dirs(root, {n.lower() for n in self._normal_names + self._abnormal_names}, max_depth=3)
        n = _one_dir(found, self._normal_names, root, "non-glaucoma folder", problems)
        a = _one_dir(found, self._abnormal_names, root, "glaucoma folder", problems)
        for d, names in ((n, self._normal_names), (a, self._abnormal_names)):
            if d is None and not any(found[x.lower()] for x in names):
                problems.append(Problem(str(root), f"no {names[0]}/ folder found (looked for "
                                        f"{', '.join(names)})", "missing-folder", skippable=False))
        return n, a

    @staticmethod
    def _images_dir(d: Path) -> Path:
        return _child(d, ("image", "images")) or d

    def list_split(self, root: Path, split: str) -> Listing:
        _check_split(split)
        root = Path(root)
        if split == "val":
            return self._no_split(root, split)
        lst = Listing(split)
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
        train, test = _seeded_split([Sample(p, 0) for p in normals], self.n_train, self.n_test_normal, self.seed)
        lst.samples = train if split == "train" else test
        lst.counts["normal"] = len(lst.samples)
        if split == "train":
            return lst
        abnormals, probs = scan_images(self._images_dir(adir), what="glaucoma images")
        lst.problems += probs
        lst.counts["abnormal"] = len(abnormals)
        amap = _child(adir, ("attention_map", "attention_maps"))
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


@dataclass
class CovidxLayout(Layout):
    """COVIDx as distributed: image folders ``train/`` and ``test/`` and split files ``train.txt``/``test.txt``
    with one ``patient_id filename label source`` line per image.

    Training uses the lines labelled ``normal_label`` ("negative") only; the test split is every line of the
    test file, normal ones first. Papers: 13,794 negative training images; 200 + 200 test images; 256 x 256.
    """

    name: ClassVar[str] = "covidx"
    default_image_size: ClassVar[int | None] = 256
    train_file: str = "train.txt"
    test_file: str = "test.txt"
    train_dir: str = "train"
    test_dir: str = "test"
    normal_label: str = "negative"

    def list_split(self, root: Path, split: str) -> Listing:
        _check_split(split)
        root = Path(root)
        if split == "val":
            return self._no_split(root, split)
        lst = Listing(split)
        split_file = root / (self.train_file if split == "train" else self.test_file)
        img_dir = root / (self.train_dir if split == "train" else self.test_dir)
        if not split_file.is_file():
            lst.problems.append(Problem(str(split_file), "split file missing (lines 'patient_id filename label "
                                        "source'; another name: --layout covidx:train_file=NAME,test_file=NAME)",
                                        "missing-folder", skippable=False))
            return lst
        if not img_dir.is_dir():
            lst.problems.append(Problem(str(img_dir), f"image folder missing (the files named in {split_file.name})",
                                        "missing-folder", skippable=False))
            return lst
        seen: set[str] = set()
        normals: list[Sample] = []
        abnormals: list[Sample] = []
        try:
            lines = split_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            raise DataError(f"{split_file}: cannot be read ({e})") from e
        for i, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{split_file}:{i}"
            if len(fields) < 3:
                lst.problems.append(Problem(where, f"expected 'patient_id filename label source', got {line!r}",
                                            "bad-line"))
                continue
            # Filenames may contain spaces: the label and source are the last two fields when there are 4+.
            fname, label = (" ".join(fields[1:-2]), fields[-2]) if len(fields) >= 4 else (fields[1], fields[2])
            normal = label.lower() == self.normal_label.lower()
            if split == "train" and not normal:
                continue
            path = img_dir / fname
            if fname in seen:
                lst.problems.append(Problem(where, f"{fname} listed twice", "duplicate-line"))
                continue
            seen.add(fname)
            if not path.is_file():
                lst.problems.append(Problem(str(path), f"listed in {split_file.name} line {i} but not found",
                                            "missing-file"))
                continue
            (normals if normal else abnormals).append(Sample(path, 0 if normal else 1))
        lst.samples = normals + abnormals
        lst.counts.update(normal=len(normals), abnormal=len(abnormals))
        if not lst.samples and not lst.problems:
            lst.problems.append(Problem(str(split_file), "no usable line" + (
                f" labelled '{self.normal_label}'" if split == "train" else ""), "empty-folder", skippable=False))
        return lst


LAYOUTS: dict[str, type[Layout]] = {
    cls.name: cls for cls in (FolderLayout, HyperKvasirLayout, LagLayout, LiuLayout, CovidxLayout)
}


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
        kwargs[key] = _parse(value.strip(), _default(fields[key]), f"layout '{name}' parameter {key}")
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
