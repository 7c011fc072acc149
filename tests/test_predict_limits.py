"""`msacl predict` and `FittedRun` under the input limits: pixels read from the header, the smallest side,
the heat map's size."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from msacl.cli.main import main
from msacl.deploy.inference import (
    HEATMAP_SIDE,
    MAX_PIXELS,
    MIN_SIDE,
    FittedRun,
    ImageTooLarge,
    ImageTooSmall,
    InputLimits,
)
from msacl.report.heatmap import BAR_WIDTH


@pytest.fixture
def run(fitted_padim: Path) -> Path:
    return fitted_padim


def header_only_png(width: int, height: int, *, complete: bool = False) -> bytes:
    """A PNG whose header says width x height but whose pixel data holds two rows: a few hundred bytes whatever
    the size, to be stopped by its header (decoded, it is a truncated image). ``complete``: every row, a black
    image that decodes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = bytes(3 * width + 1) * (height if complete else 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_header_size_is_checked_before_decoding(run, tmp_path, monkeypatch):
    import msacl.data.readers
    from conftest import dicom_bytes

    monkeypatch.setattr(msacl.data.readers, "decode", lambda path: pytest.fail(f"{path} was decoded"))
    (tmp_path / "huge.png").write_bytes(header_only_png(9000, 6000))
    (tmp_path / "case.dcm").write_bytes(dicom_bytes(48))
    model = FittedRun(run, limits=InputLimits(max_pixels=2000))
    with pytest.raises(ImageTooLarge, match=r"huge.png: 9000 x 6000 px \(54.0 megapixels\) is over the limit of "
                                            r"0.002 megapixels; --max-pixels N raises it"):
        model.load_image(tmp_path / "huge.png")
    with pytest.raises(ImageTooLarge, match="48 x 48 px"):
        model.load_image(tmp_path / "case.dcm")


def test_smallest_side_follows_the_run_and_the_limits(run, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (12, 40), (200, 90, 80)).save(small)
    with pytest.raises(ImageTooSmall, match=r"small.png: 12 x 40 px is smaller than the 16 px shorter side this "
                                            r"detector can score \(its input is 64 x 64 px\); --min-side N"):
        FittedRun(run).load_image(small)
    d = FittedRun(run, limits=InputLimits(min_side=12)).load_image(small)
    assert (d.width, d.height) == (12, 40) and d.x.shape == (3, 64, 64) and d.image.shape == (40, 12, 3)
    assert FittedRun(run).summary()["min_side"] == min(MIN_SIDE, 64)


def test_predict_skips_images_outside_the_limits_and_bounds_the_heat_map(run, synthetic_data, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "huge.png").write_bytes(header_only_png(13_000, 13_000))
    Image.new("RGB", (8, 8), (200, 90, 80)).save(src / "tiny.png")
    lesion = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
    Image.open(lesion).convert("RGB").resize((2400, 1200)).save(src / "wide.png")
    assert main(["predict", "--run", str(run), str(src), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert "huge.png: 13000 x 13000 px" in err and "--max-pixels" in err and "--on-bad-file skip" in err
    assert main(["predict", "--run", str(run), str(src), "--out", str(tmp_path / "p"), "--on-bad-file", "skip"]) == 0
    skipped = dict(line.split("\t") for line in (tmp_path / "p" / "skipped_files.txt").read_text().splitlines())
    assert "limit of 50 megapixels" in skipped[str(src / "huge.png")]
    assert "smaller than the 16 px shorter side" in skipped[str(src / "tiny.png")]
    (row,) = _rows(tmp_path / "p" / "scores.csv")
    assert (row["width"], row["height"]) == ("2400", "1200")  # the input's size, not the heat map's
    with Image.open(tmp_path / "p" / row["heatmap"]) as im:
        assert im.size[0] == HEATMAP_SIDE + BAR_WIDTH and HEATMAP_SIDE // 2 <= im.size[1] <= HEATMAP_SIDE // 2 + 40
    # the same image with a larger heat-map side and a pixel limit below it
    assert main(["predict", "--run", str(run), str(src / "wide.png"), "--out", str(tmp_path / "q"),
                 "--heatmap-side", "1200"]) == 0
    (again,) = _rows(tmp_path / "q" / "scores.csv")
    assert again["score"] == row["score"] and again["decision"] == row["decision"]
    with Image.open(tmp_path / "q" / again["heatmap"]) as im:
        assert im.size[0] == 1200 + BAR_WIDTH
    assert main(["predict", "--run", str(run), str(src / "wide.png"), "--out", str(tmp_path / "r"),
                 "--max-pixels", "2.5M"]) == 1
    assert "limit of 2.5 megapixels" in capsys.readouterr().err


def test_the_flags_name_the_library_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {MAX_PIXELS // 1_000_000}M" in text and f"default {MIN_SIDE}," in text
    assert f"default {HEATMAP_SIDE};" in text
    from msacl.cli.common import pixel_count

    assert pixel_count("50M") == 50_000_000 and pixel_count("1234") == 1234 and pixel_count("0.5m") == 500_000
    with pytest.raises(Exception, match="pixel count"):
        pixel_count("lots")


def test_pillows_own_bomb_limit_is_named_when_the_pixel_limit_is_raised_past_it(run, tmp_path):
    (tmp_path / "vast.png").write_bytes(header_only_png(15_000, 14_000))  # 210 megapixels
    model = FittedRun(run, limits=InputLimits(max_pixels=400_000_000), command="msacl predict")
    with pytest.raises(ImageTooLarge, match=r"vast.png: over the 179 megapixels that Pillow decodes at most, "
                                            r"whatever msacl predict --max-pixels says"):
        model.load_image(tmp_path / "vast.png")
