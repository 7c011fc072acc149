"""Named layouts on small trees of each data set's shape: splits, seeded determinism, parameters, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msacl.data import LAYOUTS, DataWarning, check_folder, get_layout, load_split
from msacl.data.layouts import CovidxLayout, HyperKvasirLayout
from msacl.errors import DataError


def _mask(path: Path, size: int = 16) -> None:
    m = np.zeros((size, size), np.uint8)
    m[2:6, 2:6] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def hyper_kvasir_tree(root: Path, image_file, *, n=(5, 2, 5), n_polyps=4) -> Path:
    gi = root / "labeled-images" / "lower-gi-tract"
    dirs = [gi / "anatomical-landmarks" / "cecum", gi / "anatomical-landmarks" / "ileum",
            gi / "quality-of-mucosal-views" / "bbps-2-3"]
    for d, k in zip(dirs, n, strict=True):
        for i in range(k):
            image_file(d / f"{d.name}-{i:02d}.jpg", 16, value=60 + i)
    image_file(gi / "pathological-findings" / "polyps" / "p-00.jpg", 16)  # a class folder not used
    for i in range(n_polyps):
        image_file(root / "segmented-images" / "images" / f"poly{i}.jpg", 16, value=180)
        _mask(root / "segmented-images" / "masks" / f"poly{i}.jpg")
    return root


def test_hyper_kvasir_seeded_disjoint_split_with_polyp_masks(tmp_path, image_file):
    root = hyper_kvasir_tree(tmp_path / "hk", image_file)
    layout = "hyper-kvasir:n_train=8,n_test_normal=3"
    train = load_split(root, "train", layout=layout, image_size=16)
    with pytest.warns(DataWarning, match="4 files: masks not binary"):  # Hyper-Kvasir's masks are JPEGs
        test = load_split(root, "test", layout=layout, image_size=16)
    assert len(train) == 8 and test.labels.tolist() == [0] * 3 + [1] * 4
    assert not set(train.paths) & set(test.paths)
    assert {Path(p).parent.name for p in train.paths + test.paths[:3]} <= {"cecum", "ileum", "bbps-2-3"}
    assert test.masks.shape == (7, 1, 16, 16) and test.masks[3:].sum((1, 2, 3)).tolist() == [16.0] * 4
    # deterministic for a seed, different for another; the numbers are parameters
    assert load_split(root, "train", layout=layout, image_size=16).paths == train.paths
    other = load_split(root, "train", layout=layout + ",seed=1", image_size=16)
    assert sorted(other.paths) != sorted(train.paths)
    with pytest.warns(DataWarning, match="2 files: masks not binary"):
        few = load_split(root, "test", layout=layout + ",n_abnormal=2", image_size=16)
    assert few.labels.tolist() == [0, 0, 0, 1, 1]


def test_hyper_kvasir_defaults_are_the_papers(tmp_path, image_file):
    lay = get_layout("hyper-kvasir")
    assert (lay.n_train, lay.n_test_normal, lay.classes, lay.default_image_size) == (
        1600, 500, ("cecum", "ileum", "bbps-2-3"), 256)
    root = hyper_kvasir_tree(tmp_path / "hk", image_file)
    with pytest.raises(DataError, match=r"12 normal images \(cecum: 5, ileum: 2, bbps-2-3: 5\) but n_train \+ "
                                        r"n_test_normal = 2100; pass smaller numbers"):
        load_split(root, "train", layout="hyper-kvasir")
    with pytest.raises(DataError, match="has no 'val' split"):
        load_split(root, "val", layout="hyper-kvasir")
    with pytest.warns(DataWarning, match="upsampled to 256x256"):
        train = load_split(root, "train", layout=HyperKvasirLayout(n_train=4, n_test_normal=4))
    assert train.images.shape == (4, 3, 256, 256)  # the papers' size when image_size is not given


def test_hyper_kvasir_missing_class_folder_is_named(tmp_path, image_file):
    root = hyper_kvasir_tree(tmp_path / "hk", image_file)
    for f in (root / "labeled-images/lower-gi-tract/anatomical-landmarks/ileum").iterdir():
        f.unlink()
    (root / "labeled-images/lower-gi-tract/anatomical-landmarks/ileum").rmdir()
    with pytest.raises(DataError, match=r"no 'ileum' class folder found .*classes=cecum\+bbps-2-3"):
        load_split(root, "train", layout="hyper-kvasir:n_train=4,n_test_normal=2", image_size=16)
    train = load_split(root, "train", layout="hyper-kvasir:n_train=4,n_test_normal=2,classes=cecum+bbps-2-3",
                       image_size=16)
    assert len(train) == 4


def lag_tree(root: Path, image_file, *, n_normal=6, n_glaucoma=3) -> Path:
    for i in range(n_normal):
        image_file(root / "non_glaucoma" / "image" / f"n{i}.jpg", 16, value=40)
    for i in range(n_glaucoma):
        image_file(root / "suspicious_glaucoma" / "image" / f"g{i}.jpg", 16, value=90)
        _mask(root / "suspicious_glaucoma" / "attention_map" / f"g{i}.jpg")
    return root


def test_lag_layout(tmp_path, image_file):
    root = lag_tree(tmp_path / "LAG", image_file)
    layout = "lag:n_train=4,n_test_normal=2"
    train = load_split(root, "train", layout=layout, image_size=16)
    test = load_split(root, "test", layout=layout, image_size=16)
    assert len(train) == 4 and test.labels.tolist() == [0, 0, 1, 1, 1] and test.masks is None
    assert not set(train.paths) & set(test.paths)
    with pytest.warns(DataWarning, match="not binary"):  # JPEG attention maps are grey-level
        att = load_split(root, "test", layout=layout + ",attention_masks=true", image_size=16)
    assert att.masks is not None and att.masks[2:].sum() > 0
    lay = get_layout("lag")
    assert (lay.n_train, lay.n_test_normal, lay.default_image_size) == (2343, 800, 256)
    with pytest.raises(DataError, match=r"no suspicious_glaucoma/ folder found"):
        load_split(tmp_path / "LAG" / "non_glaucoma", "train", layout=layout)


def test_liu_layout_accepts_its_folder_names_and_uses_64_px(tmp_path, image_file):
    root = tmp_path / "liu"
    for i in range(3):
        image_file(root / "train" / "Normal" / f"t{i}.png", 80)
    image_file(root / "test" / "normal" / "n0.png", 80)
    image_file(root / "test" / "Polyp" / "p0.png", 80)
    test = load_split(root, "test", layout="liu")
    assert test.images.shape == (2, 3, 64, 64) and test.labels.tolist() == [0, 1]
    assert load_split(root, "train", layout="liu").images.shape == (3, 3, 64, 64)
    with pytest.raises(DataError, match="train/normal"):
        load_split(root, "train")  # the plain folder layout is case-sensitive


def covidx_tree(root: Path, image_file) -> Path:
    rows_train = [("p1", "a.png", "negative"), ("p2", "b.png", "positive"), ("p3", "c.png", "negative")]
    rows_test = [("q1", "x.png", "positive"), ("q2", "y.png", "negative"), ("q3", "z z.png", "negative")]
    for split, rows in (("train", rows_train), ("test", rows_test)):
        for _, f, _ in rows:
            image_file(root / split / f, 16)
        (root / f"{split}.txt").write_text("".join(f"{p} {f} {lab} sourceA\n" for p, f, lab in rows) + "\n")
    return root


def test_covidx_split_files(tmp_path, image_file):
    root = covidx_tree(tmp_path / "covidx", image_file)
    train = load_split(root, "train", layout="covidx", image_size=16)
    assert [Path(p).name for p in train.paths] == ["a.png", "c.png"] and train.labels.tolist() == [0, 0]
    test = load_split(root, "test", layout="covidx", image_size=16)
    assert [Path(p).name for p in test.paths] == ["y.png", "z z.png", "x.png"]  # normal first
    assert test.labels.tolist() == [0, 0, 1]
    assert CovidxLayout().normal_label == "negative" and CovidxLayout.default_image_size == 256


def test_covidx_bad_lines_and_missing_files_are_named(tmp_path, image_file):
    root = covidx_tree(tmp_path / "covidx", image_file)
    with open(root / "test.txt", "a") as f:
        f.write("just-two fields\nq9 gone.png positive src\n")
    with pytest.raises(DataError) as e:
        load_split(root, "test", layout="covidx", image_size=16)
    assert "test.txt:5: expected 'patient_id filename label source'" in str(e.value)
    assert "test/gone.png: listed in test.txt line 6 but not found" in str(e.value)
    test = load_split(root, "test", layout="covidx", image_size=16, on_bad_file="skip")
    assert len(test) == 3 and len(test.skipped) == 2
    (root / "train.txt").unlink()
    with pytest.raises(DataError, match=r"train\.txt: split file missing"):
        load_split(root, "train", layout="covidx:train_file=train.txt")


def test_layout_names_parameters_and_errors():
    assert set(LAYOUTS) == {"folder", "hyper-kvasir", "lag", "liu", "covidx"}
    lay = get_layout("hyper-kvasir:n_train=10, seed=3, n_abnormal=all")
    assert (lay.n_train, lay.seed, lay.n_abnormal) == (10, 3, None)
    assert get_layout(lay.spec()) == lay and lay.spec() == "hyper-kvasir:n_train=10,seed=3"
    assert get_layout("lag:attention_masks=yes").attention_masks is True
    with pytest.raises(DataError, match=r"unknown layout 'kvasir'; choose from folder, hyper-kvasir"):
        get_layout("kvasir")
    with pytest.raises(DataError, match=r"bad parameter 'ntrain=3'; parameters are n_train=\.\.\."):
        get_layout("hyper-kvasir:ntrain=3")
    with pytest.raises(DataError, match=r"parameter n_train: cannot read 'many' as int"):
        get_layout("lag:n_train=many")
    with pytest.raises(DataError, match=r"bad parameter 'x=1'; parameters are \(none\)"):
        get_layout("folder:x=1")


def test_check_folder_reads_named_layouts(tmp_path, image_file):
    root = hyper_kvasir_tree(tmp_path / "hk", image_file)
    rep = check_folder(root, layout="hyper-kvasir:n_train=8,n_test_normal=3", image_size=16)
    assert rep.ok, rep.format()
    counts = {s.split: s.counts for s in rep.splits}
    assert counts == {"train": {"normal": 8, "abnormal": 0, "masks": 0},
                      "test": {"normal": 3, "abnormal": 4, "masks": 4}}
    assert rep.splits[1].mask_coverage == pytest.approx(16 / 256)
