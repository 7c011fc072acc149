"""`msacl check-data`: counts, sizes, modes, coverage, every problem collected, exit status, JSON report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msacl.cli.main import build_parser, main
from msacl.data import check_folder


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["check-data", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out + err


def test_synthetic_folder_is_ok(capsys, synthetic_data):
    code, out = _run(capsys, str(synthetic_data))
    assert code == 0, out
    assert "train: 64 normal\n" in out and "test: 24 normal, 24 abnormal, 24 masks\n" in out
    assert "sizes: 64x64 (48)" in out and "modes: RGB (48)" in out
    assert "mask coverage:" in out and "Problems: none" in out and "OK: 0 error(s), 0 warning(s)" in out


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def test_broken_copy_names_every_problem_and_exits_1(capsys, tmp_path, synthetic_data):
    root = Path(shutil.copytree(synthetic_data, tmp_path / "d"))
    _truncate(root / "test/abnormal/lesion_0003.png")
    (root / "test/masks/lesion_0007.png").unlink()
    (root / "train/normal/normal_0001.png").write_bytes(b"")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(root / "test/masks/lesion_0009.png")
    (root / "train/normal/notes.txt").write_text("x")
    code, out = _run(capsys, str(root), "--json", str(tmp_path / "report.json"))
    assert code == 1
    assert "test/abnormal/lesion_0003.png: truncated image" in out
    assert "test/abnormal/lesion_0007.png: no mask with stem 'lesion_0007'" in out
    assert "train/normal/normal_0001.png: empty file (0 bytes)" in out
    assert "test/masks/lesion_0009.png: mask is 10x10 but its image lesion_0009.png is 64x64" in out
    assert "train/normal/notes.txt: not an image file" in out
    assert "NOT USABLE as it is: 5 error(s)" in out
    assert "test: 24 normal, 24 abnormal, 23 masks  (45 usable)" in out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["ok"] is False and rep["errors"] == 5
    kinds = {p["kind"] for s in rep["splits"].values() for p in s["problems"]}
    assert kinds == {"truncated", "missing-mask", "empty-file", "mask-size", "not-image"}


def test_warnings_alone_exit_0(capsys, tmp_path, synthetic_data):
    root = Path(shutil.copytree(synthetic_data, tmp_path / "d"))
    Image.open(root / "test/abnormal/lesion_0000.png").convert("L").save(root / "test/abnormal/lesion_0000.png")
    m = np.asarray(Image.open(root / "test/masks/lesion_0001.png")).copy()
    m[m == 255] = 200
    Image.fromarray(m).save(root / "test/masks/lesion_0001.png")
    (root / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "extra/x.png")
    code, out = _run(capsys, str(root), "--image-size", "96")
    assert code == 0, out
    assert "WARNING test: mixed channel counts (normal 24 colour; abnormal 23 colour, 1 grey" in out
    assert "WARNING test/masks/lesion_0001.png: " in out and "neither 0 nor 255" in out
    assert "64x64, upsampled to 96x96" in out and "more 'small-image' (all in --json)" in out
    assert "extra: not part of any split (1 images); not read" in out
    assert "OK: 0 error(s), 114 warning(s)" in out


def test_no_upsample_makes_small_images_errors(capsys, synthetic_data):
    code, out = _run(capsys, str(synthetic_data), "--image-size", "96", "--no-upsample", "--splits", "train")
    assert code == 1 and "is smaller than 96x96 and upsampling is off" in out and "test:" not in out


def test_test_only_folder_and_missing_folder(capsys, tmp_path, synthetic_data):
    root = tmp_path / "frames"
    shutil.copytree(synthetic_data / "test", root / "test")
    shutil.rmtree(root / "test/normal")
    code, out = _run(capsys, str(root))
    assert code == 1 and "ERROR   train: split folder missing (expected train/normal)" in out
    code, out = _run(capsys, str(root), "--splits", "test")
    assert code == 0 and "WARNING test/normal: missing: this split has abnormal images only" in out
    code, out = _run(capsys, str(tmp_path / "nowhere"))
    assert code == 1 and "nowhere: data folder not found" in out
    code, out = _run(capsys, str(root), "--splits", "tests")
    assert code == 1 and "unknown split(s) tests" in out


def test_help_has_examples():
    sub = build_parser()._subparsers._group_actions[0].choices["check-data"]  # noqa: SLF001
    text = sub.format_help()
    assert "examples:" in text and "--layout hyper-kvasir" in text and "--json FILE" in text


def test_real_kvasir_patches_counts(capsys, shared_data):
    code, out = _run(capsys, str(shared_data / "kvasir_seg_patch128"))
    assert code == 0, out
    assert "train: 313 normal\n" in out and "test: 143 normal, 401 abnormal, 401 masks\n" in out
    assert "sizes: 128x128 (544)" in out and "Problems: none" in out


def test_real_pneumoniamnist_has_a_val_split(shared_data):
    rep = check_folder(shared_data / "pneumoniamnist_28", progress=False)
    assert rep.ok and [s.split for s in rep.splits] == ["train", "val", "test"]
    assert [s.counts["normal"] for s in rep.splits] == [1213, 135, 234]
    assert [s.counts["abnormal"] for s in rep.splits] == [0, 389, 390]
    assert rep.splits[0].modes == {"L": 1213} and rep.splits[0].sizes == {"28x28": 1213}


def test_real_odir_extra_folder_is_an_extra_not_an_error(shared_data):
    rep = check_folder(shared_data / "odir_fundus_256", progress=False)
    assert rep.ok and not rep.warnings
    assert [(Path(p).name, n) for p, n in rep.extras] == [
        ("extra_abnormal", "not part of any split (964 images); not read")]


@pytest.mark.slow
def test_real_brain_mri_colour_mode_shortcut_is_flagged(shared_data):
    rep = check_folder(shared_data / "brain_tumor_mri_224", progress=False)
    assert rep.ok
    (w,) = [p for p in rep.warnings if p.path.endswith("test")]
    assert w.kind == "mixed-channels" and "grey are 1% of normal but 69% of abnormal images" in w.message
