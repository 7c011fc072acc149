"""load_split on the folder layout: tensors, order, masks, every kind of bad input, skip mode and the disk cache."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msacl.data import DataWarning, ImageSet, load_split, write_skipped
from msacl.errors import DataError


def _mask(path: Path, size: int = 16, box: tuple[int, int, int, int] = (4, 4, 8, 8), values=(0, 255)) -> Path:
    m = np.full((size, size), values[0], np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = values[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)
    return path


def make_tree(root: Path, image_file, *, n_train=3, n_normal=2, n_abnormal=2, masks=True, size=16) -> Path:
    for i in range(n_train):
        image_file(root / "train/normal" / f"t{i}.png", size, value=10 + i)
    for i in range(n_normal):
        image_file(root / "test/normal" / f"n{i}.png", size, value=50 + i)
    for i in range(n_abnormal):
        image_file(root / "test/abnormal" / f"a{i}.png", size, value=200 + i)
        if masks:
            _mask(root / "test/masks" / f"a{i}.png", size)
    return root


def test_synthetic_train_and_test_splits(synthetic_data):
    train = load_split(synthetic_data, "train")
    assert isinstance(train, ImageSet) and train.images.shape == (64, 3, 64, 64)
    assert train.images.dtype == torch.float32 and 0 <= train.images.min() and train.images.max() <= 1
    assert torch.equal(train.labels, torch.zeros(64, dtype=torch.long)) and train.masks is None
    test = load_split(synthetic_data, "test")
    assert test.labels.tolist() == [0] * 24 + [1] * 24
    assert [Path(p).parent.name for p in test.paths] == ["normal"] * 24 + ["abnormal"] * 24
    assert test.paths == sorted(test.paths[:24]) + sorted(test.paths[24:])
    assert test.masks.shape == (48, 1, 64, 64) and set(test.masks.unique().tolist()) == {0.0, 1.0}
    assert test.masks[:24].sum() == 0 and (test.masks[24:].flatten(1).sum(1) > 0).all()
    assert not test.skipped


def test_pixels_masks_and_resize(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file, size=16)
    test = load_split(root, "test", image_size=8, channels=1)
    assert test.images.shape == (4, 1, 8, 8) and test.masks.shape == (4, 1, 8, 8)
    # a constant RGB (v, v, v) image is luma v
    assert torch.allclose(test.images[2], torch.full((1, 8, 8), 200 / 255))
    expect = torch.zeros(8, 8)
    expect[2:4, 2:4] = 1  # the 4x4 box at (4, 4) of a 16 px mask, halved by nearest resizing
    assert torch.equal(test.masks[2, 0], expect) and test.masks[:2].sum() == 0
    native = load_split(root, "test")
    assert native.images.shape == (4, 3, 16, 16) and native.masks[3, 0, 4:8, 4:8].sum() == 16


def test_threads_and_single_thread_give_identical_tensors(synthetic_data):
    a = load_split(synthetic_data, "test", image_size=32, num_workers=1)
    b = load_split(synthetic_data, "test", image_size=32, num_workers=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and a.paths == b.paths


def test_missing_and_empty_folders_are_errors(tmp_path, image_file):
    with pytest.raises(DataError, match=r"nowhere: data folder not found"):
        load_split(tmp_path / "nowhere", "train")
    root = tmp_path / "d"
    (root / "train" / "normal").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/normal: empty folder \(no normal images\)"):
        load_split(root, "train")
    with pytest.raises(DataError, match=r"test: split folder missing \(expected test/normal and test/abnormal\)"):
        load_split(root, "test")
    with pytest.raises(DataError, match=r"val: split folder missing.*val/ is optional"):
        load_split(root, "val")
    (root / "test").mkdir()
    with pytest.raises(DataError, match=r"test: no normal/ and no abnormal/ folder inside"):
        load_split(root, "test")
    (root / "train" / "normal" / ".DS_Store").write_bytes(b"\x00")  # hidden files are not images either
    with pytest.raises(DataError, match="empty folder"):
        load_split(root, "train", on_bad_file="skip")  # a missing/empty folder is never skipped
    with pytest.raises(DataError, match=r"unknown split 'validation'"):
        load_split(root, "validation")


def test_pointing_at_a_split_folder_gets_a_hint(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    with pytest.raises(DataError, match="looks like a split folder itself: pass the folder above it"):
        load_split(root / "test", "test")


def _bad_files(root: Path) -> dict[str, str]:
    """Write one bad file of each kind into train/normal; returns name -> expected message fragment."""
    good = root / "train/normal/t0.png"
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "train/normal/full.png")
    data = (root / "train/normal/full.png").read_bytes()
    (root / "train/normal/full.png").unlink()
    (root / "train/normal/cut.png").write_bytes(data[: len(data) // 2])
    (root / "train/normal/zero.png").write_bytes(b"")
    (root / "train/normal/junk.png").write_bytes(b"GIF89a but not really" * 5)
    (root / "train/normal/notes.txt").write_text("not an image")
    (root / "train/normal/scan.dcm").write_bytes(b"\x00" * 40)
    shutil.copy(good, root / "train/normal/t0.jpg")  # duplicate stem with t0.png
    return {
        "cut.png": "truncated image", "zero.png": r"empty file \(0 bytes\)", "junk.png": "not a readable image",
        "notes.txt": r"not an image file \(extension '\.txt'\)", "scan.dcm": "unreadable DICOM",
        "t0.png": "duplicate stem 't0': t0.jpg and t0.png in the same folder",
        "t0.jpg": "duplicate stem 't0'",
    }


def test_bad_files_raise_naming_each_file(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    expected = _bad_files(root)
    with pytest.raises(DataError) as e:
        load_split(root, "train")
    msg = str(e.value)
    # listing already finds non-images and duplicate stems, before anything is decoded
    assert msg.startswith("3 problems:")
    for name in ("notes.txt", "t0.png", "t0.jpg"):
        assert re.search(rf"train/normal/{re.escape(name)}: {expected[name]}", msg), name
    assert "check-data" in msg and "on_bad_file='skip'" in msg
    for name in ("notes.txt", "t0.jpg"):
        (root / "train/normal" / name).unlink()
    with pytest.raises(DataError) as e:
        load_split(root, "train")
    for name in ("cut.png", "zero.png", "junk.png", "scan.dcm"):
        assert re.search(rf"train/normal/{re.escape(name)}: {expected[name]}", str(e.value)), name


def test_skip_leaves_bad_files_out_and_records_why(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    expected = _bad_files(root)
    train = load_split(root, "train", on_bad_file="skip")
    assert [Path(p).name for p in train.paths] == ["t1.png", "t2.png"]
    reasons = {Path(p).name: r for p, r in train.skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert re.search(fragment, reasons[name]), (name, reasons[name])
    n = write_skipped(tmp_path / "run", train)
    lines = (tmp_path / "run" / "skipped_files.txt").read_text().splitlines()
    assert n == len(expected) == len(lines) and all("\t" in ln for ln in lines)
    assert write_skipped(tmp_path / "run2", load_split(root, "test")) == 0
    assert not (tmp_path / "run2" / "skipped_files.txt").exists()


@pytest.mark.parametrize("name", ["cut.png", "zero.png", "junk.png", "scan.dcm"])
def test_each_undecodable_file_alone_is_an_error_naming_it(tmp_path, image_file, name):
    root = make_tree(tmp_path / "d", image_file)
    expected = _bad_files(root)
    for other in expected:
        if other != name and other != "t0.png":
            (root / "train/normal" / other).unlink()
    with pytest.raises(DataError, match=rf"{re.escape(name)}: {expected[name]}"):
        load_split(root, "train")


def test_hidden_files_are_ignored(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    (root / "train/normal/.DS_Store").write_bytes(b"\x00\x01")
    (root / "train/normal/Thumbs.db").write_bytes(b"\x00\x01")
    (root / "train/normal/._t0.png").write_bytes(b"\x00\x01")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_split(root, "train")) == 3


def test_mask_without_image_and_image_without_mask(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    (root / "test/masks/a1.png").unlink()
    _mask(root / "test/masks/ghost.png")
    with pytest.raises(DataError) as e:
        load_split(root, "test")
    assert "a1.png: no mask with stem 'a1'" in str(e.value)
    assert "ghost.png: mask without its image" in str(e.value)
    test = load_split(root, "test", on_bad_file="skip")
    assert [Path(p).name for p in test.paths] == ["n0.png", "n1.png", "a0.png"]
    assert {Path(p).name for p, _ in test.skipped} == {"a1.png", "ghost.png"}


def test_without_a_mask_folder_masks_are_none(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file, masks=False)
    test = load_split(root, "test")
    assert test.masks is None and test.labels.tolist() == [0, 0, 1, 1]


def test_mask_of_another_size_is_an_error(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    _mask(root / "test/masks/a0.png", size=12)
    with pytest.raises(DataError, match=r"masks/a0\.png: mask is 12x12 but its image a0\.png is 16x16"):
        load_split(root, "test")
    assert len(load_split(root, "test", on_bad_file="skip")) == 3


def test_non_binary_masks_are_thresholded_and_counted_in_a_warning(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file, n_abnormal=3)
    for i in range(2):
        m = np.zeros((16, 16), np.uint8)
        m[4:8, 4:8] = 200
        m[4:8, 8] = 100  # below half range: background
        Image.fromarray(m).save(root / f"test/masks/a{i}.png")
    with pytest.warns(DataWarning, match=r"2 files: masks not binary, thresholded at half range: .*a0\.png") as w:
        test = load_split(root, "test")
    assert len([x for x in w if issubclass(x.category, DataWarning)]) == 1
    assert torch.equal(test.masks[2:5].sum((1, 2, 3)), torch.tensor([16.0, 16.0, 16.0]))


def test_empty_mask_of_an_abnormal_image_warns(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    _mask(root / "test/masks/a1.png", box=(0, 0, 0, 0))
    with pytest.warns(DataWarning, match=r"masks/a1\.png: no lesion pixel in the mask of abnormal image a1\.png"):
        load_split(root, "test")


def test_small_images_upsample_with_a_warning_or_are_refused(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file, size=16)
    image_file(root / "train/normal/t1.png", 10)
    with pytest.warns(DataWarning, match=r"t1\.png: 10x10, upsampled to 12x12"):
        train = load_split(root, "train", image_size=12)
    assert train.images.shape == (3, 3, 12, 12)
    with pytest.raises(DataError, match=r"t1\.png: 10x10 is smaller than 12x12 and upsampling is off"):
        load_split(root, "train", image_size=12, allow_upsample=False)
    assert len(load_split(root, "train", image_size=12, allow_upsample=False, on_bad_file="skip")) == 2


def test_mixed_channel_counts_warn_and_convert(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    for i in range(2):
        image_file(root / "test/abnormal" / f"a{i}.png", 16, mode="L", value=90)
    with pytest.warns(DataWarning, match=r"mixed channel counts \(normal 2 colour; abnormal 2 grey.*"
                                         r"grey are 0% of normal but 100% of abnormal images"):
        test = load_split(root, "test")
    assert test.images.shape == (4, 3, 16, 16) and torch.allclose(test.images[2], torch.tensor(90 / 255))


def test_different_native_sizes_need_an_image_size(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    image_file(root / "train/normal/t2.png", (20, 18))
    with pytest.raises(DataError, match=r"images differ in size: 2 are 16x16 .*1 are 20x18 \(e.g. t2\.png\); "
                                        r"set an image size"):
        load_split(root, "train")
    assert load_split(root, "train", image_size=16).images.shape == (3, 3, 16, 16)


def test_subfolders_are_reported_not_silently_dropped(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    image_file(root / "train/normal/more/t9.png")
    with pytest.warns(DataWarning, match=r"normal/more: subfolder not read"):
        assert len(load_split(root, "train")) == 3


def test_val_split_and_a_test_split_with_abnormal_images_only(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    image_file(root / "val/normal/v0.png")
    image_file(root / "val/abnormal/w0.png")
    val = load_split(root, "val")
    assert val.labels.tolist() == [0, 1] and val.masks is None
    shutil.rmtree(root / "test/normal")
    with pytest.warns(DataWarning, match=r"test/normal: missing: this split has abnormal images only"):
        test = load_split(root, "test")
    assert test.labels.tolist() == [1, 1]


def test_disk_cache_is_reused_and_invalidated(tmp_path, image_file, monkeypatch):
    root = make_tree(tmp_path / "d", image_file)
    cache = tmp_path / "cache"
    first = load_split(root, "test", image_size=8, cache_dir=cache)
    files = list(cache.glob("test-*.pt"))
    assert len(files) == 1 and not list(cache.glob(".*tmp"))  # written atomically, no temp file left

    import msacl.data.loader as loader

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(loader, "decode_listing", no_decoding)
    again = load_split(root, "test", image_size=8, cache_dir=cache)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert first.paths == again.paths and torch.equal(first.labels, again.labels)
    with pytest.raises(AssertionError):  # other settings, other key
        load_split(root, "test", image_size=4, cache_dir=cache)
    p = root / "test/normal/n0.png"
    image_file(p, 16, value=99)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError):  # a changed file, a new key
        load_split(root, "test", image_size=8, cache_dir=cache)
    monkeypatch.undo()
    changed = load_split(root, "test", image_size=8, cache_dir=cache)
    assert torch.allclose(changed.images[0], torch.tensor(99 / 255))
    uncached = load_split(root, "test", image_size=8)
    assert torch.equal(changed.images, uncached.images)


def test_cached_warnings_are_repeated_and_a_corrupt_cache_is_rebuilt(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    image_file(root / "train/normal/t1.png", 10)
    cache = tmp_path / "cache"
    with pytest.warns(DataWarning, match="upsampled"):
        load_split(root, "train", image_size=12, cache_dir=cache)
    with pytest.warns(DataWarning, match="upsampled"):
        load_split(root, "train", image_size=12, cache_dir=cache)
    (f,) = cache.glob("train-*.pt")
    f.write_bytes(b"garbage")
    with pytest.warns(DataWarning) as w:
        assert len(load_split(root, "train", image_size=12, cache_dir=cache)) == 3
    text = " | ".join(str(x.message) for x in w)
    assert "unreadable cache file" in text and "upsampled" in text


def test_bad_arguments_are_errors(tmp_path, image_file):
    root = make_tree(tmp_path / "d", image_file)
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        load_split(root, "train", channels=2)
    with pytest.raises(DataError, match="on_bad_file must be"):
        load_split(root, "train", on_bad_file="ignore")
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        load_split(root, "train", image_size=0)
    with pytest.raises(DataError, match="unknown layout 'kvasir'"):
        load_split(root, "train", layout="kvasir")
