"""The ``covidx`` layout: COVIDx as distributed, image folders with split files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from msacl.data.layouts.base import Layout
from msacl.data.listing import Listing, Sample
from msacl.data.problems import Problem
from msacl.errors import DataError


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

    def _list(self, root: Path, lst: Listing) -> Listing:
        split = lst.split
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
