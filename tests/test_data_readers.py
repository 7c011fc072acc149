"""Readers: every format and mode to [0, 1] with the configured channels; DICOM windowing; bad files named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from msacl.data import read_image
from msacl.data.readers import decode, dicom_window, mask_pixels
from msacl.errors import DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)


def _expect_rgb(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_rgb_formats_read_exactly(tmp_path, suffix):
    p = tmp_path / f"x{suffix}"
    kw = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(RGB).save(p, **kw)
    x = read_image(p)
    assert x.dtype == torch.float32 and x.shape == (3, 6, 5)
    assert torch.equal(x, _expect_rgb(RGB))


def test_jpeg_reads_close_to_source(tmp_path):
    smooth = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    Image.fromarray(smooth).save(tmp_path / "x.jpg", quality=95)
    x = read_image(tmp_path / "x.jpg")
    assert (x - _expect_rgb(smooth)).abs().max() < 4 / 255


def test_grey_and_colour_are_converted_to_the_asked_channels(tmp_path):
    Image.fromarray(GREY).save(tmp_path / "g.png")
    Image.fromarray(RGB).save(tmp_path / "c.png")
    g3 = read_image(tmp_path / "g.png", channels=3)
    assert g3.shape == (3, 6, 5) and torch.equal(g3[0], g3[2])
    assert torch.equal(g3[1], torch.from_numpy(GREY).float() / 255)
    c1 = read_image(tmp_path / "c.png", channels=1)
    # ITU-R 601 luma, as Pillow's "L" conversion rounds it
    luma = np.array(Image.fromarray(RGB).convert("L"))
    assert torch.equal(c1[0], torch.from_numpy(luma).float() / 255)
    ref = (RGB.astype(float) @ [0.299, 0.587, 0.114]) / 255
    assert np.abs(c1[0].numpy() - ref).max() <= 1 / 255


def test_rgba_drops_alpha_and_palette_and_bilevel_read(tmp_path):
    rgba = np.dstack([RGB, np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), _expect_rgb(RGB))
    Image.fromarray(RGB).convert("P").save(tmp_path / "p.png")
    pal = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert torch.equal(read_image(tmp_path / "p.png"), _expect_rgb(pal))
    Image.fromarray(GREY > 128).save(tmp_path / "b.png")
    assert torch.equal(read_image(tmp_path / "b.png", channels=1)[0], torch.from_numpy(GREY > 128).float())


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_use_the_full_16_bit_range(tmp_path, suffix):
    p = tmp_path / f"x{suffix}"
    Image.fromarray(GREY16).save(p)
    assert decode(p).mode.startswith("I")
    x = read_image(p, channels=1)
    assert torch.allclose(x[0], torch.from_numpy(GREY16.astype(np.float32)) / 65535, atol=1e-6)
    assert read_image(p).shape == (3, 6, 5)


def test_resize_is_bilinear_and_antialiased(tmp_path):
    stripes = np.zeros((32, 32), np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "s.png")
    x = read_image(tmp_path / "s.png", channels=1, image_size=8)
    assert x.shape == (1, 8, 8)
    # antialiased: one-pixel stripes average to grey instead of aliasing to black or white
    assert (x - 0.5).abs().max() < 0.05


def _write_dicom(path, pixels, *, photometric="MONOCHROME2", window=None, rescale=None, preamble=True):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def _window_reference(x, c, w):
    """DICOM PS3.3 C.11.2.1.2.1, written out per pixel."""
    out = np.empty_like(x, dtype=float)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j]
            if v <= c - 0.5 - (w - 1) / 2:
                out[i, j] = 0.0
            elif v > c - 0.5 + (w - 1) / 2:
                out[i, j] = 1.0
            else:
                out[i, j] = (v - (c - 0.5)) / (w - 1) + 0.5
    return out


def test_dicom_window_matches_the_standard_formula():
    x = np.linspace(-200, 600, 77).reshape(7, 11)
    for c, w in [(40.0, 400.0), (100.5, 31.0), (0.0, 2.0)]:
        assert np.allclose(dicom_window(x, c, w), _window_reference(x, c, w))


def test_dicom_uses_rescale_and_window_from_its_tags(tmp_path):
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50  # 0..3150
    p = _write_dicom(tmp_path / "ct.dcm", raw, window=(40, 400), rescale=(1, -1024))
    x = read_image(p, channels=1)[0].numpy()
    hu = raw.astype(float) - 1024
    assert np.allclose(x, _window_reference(hu, 40, 400), atol=1e-6)
    assert decode(p).mode == "DICOM MONOCHROME2"


def test_dicom_without_window_is_min_max_and_monochrome1_is_inverted(tmp_path):
    raw = np.arange(16, dtype=np.uint16).reshape(4, 4) * 10 + 100
    x2 = read_image(_write_dicom(tmp_path / "m2.dcm", raw), channels=1)[0].numpy()
    assert np.allclose(x2, (raw - 100) / 150.0, atol=1e-6)
    x1 = read_image(_write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"), channels=1)[0].numpy()
    assert np.allclose(x1, 1 - (raw - 100) / 150.0, atol=1e-6)


def test_extensionless_dicom_is_recognised(tmp_path):
    raw = np.arange(16, dtype=np.uint16).reshape(4, 4)
    p = _write_dicom(tmp_path / "IM0001", raw)
    assert read_image(p).shape == (3, 4, 4)


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # pydicom's own notes on the broken file
def test_unreadable_dicom_is_named(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage" * 3)
    with pytest.raises(DataError, match=r"broken\.dcm: unreadable DICOM"):
        read_image(bad)


def test_bad_files_are_named_with_their_problem(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: truncated image"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "noise.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError, match=r"noise\.png: not a readable image"):
        read_image(tmp_path / "noise.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file \(extension '\.txt'"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"absent\.png: cannot be read"):
        read_image(tmp_path / "absent.png")


ADAM7 = ((0, 8, 0, 8), (0, 8, 4, 8), (4, 8, 0, 4), (0, 4, 2, 4), (2, 4, 0, 2), (0, 2, 1, 2), (1, 2, 0, 1))


def _grey_png(path, pixels: np.ndarray, *, interlaced: bool = False, drop: int = 0) -> None:
    """An 8-bit grey PNG written by hand (Pillow writes no interlaced PNG): the rows of each Adam7 pass or of the
    whole image, each after filter byte 0, with the last ``drop`` bytes of that pixel data left out; the zlib
    stream and every chunk's CRC stay valid, so only the length of the pixel data tells."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    passes = [pixels[r0::dr, c0::dc] for r0, dr, c0, dc in ADAM7] if interlaced else [pixels]
    raw = b"".join(b"\x00" + row.tobytes() for p in passes if p.size for row in p)
    h, w = pixels.shape
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, int(interlaced)))
                     + chunk(b"IDAT", zlib.compress(raw[:len(raw) - drop])) + chunk(b"IEND", b""))


@pytest.mark.parametrize("interlaced", [False, True])
def test_png_with_pixel_data_shorter_than_its_header_is_named_not_filled_with_black(tmp_path, interlaced):
    pixels = RNG.integers(1, 256, (37, 21), dtype=np.uint8)
    _grey_png(tmp_path / "whole.png", pixels, interlaced=interlaced)
    with Image.open(tmp_path / "whole.png") as im:  # the hand-written file is what Pillow reads it as
        assert np.array_equal(np.asarray(im), pixels)
    assert np.allclose(read_image(tmp_path / "whole.png").numpy()[0], pixels / 255.0)
    # Five whole rows short (22 bytes a row, the last pass's rows too): Pillow decodes the file without a word,
    # those rows black; here it is a truncated image.
    _grey_png(tmp_path / "short.png", pixels, interlaced=interlaced, drop=5 * 22)
    with Image.open(tmp_path / "short.png") as im:
        im.load()  # the behaviour this check exists for
        assert (np.asarray(im) == 0).sum() == 5 * 21
    total = sum(len(range(r0, 37, dr)) * (1 + len(range(c0, 21, dc))) for r0, dr, c0, dc in ADAM7) \
        if interlaced else 37 * 22
    with pytest.raises(DataError, match=rf"short\.png: truncated image: its pixel data holds {total - 110} of "
                                        rf"the {total} bytes"):
        read_image(tmp_path / "short.png")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "I;16", "LA"])
def test_every_kind_of_png_pillow_writes_passes_the_pixel_data_check(tmp_path, mode):
    arr = RNG.integers(0, 256, (37, 21, 4), dtype=np.uint8)
    im = Image.fromarray(arr[..., 0].astype(np.uint16) * 257) if mode == "I;16" else \
        Image.fromarray(arr, "RGBA").convert(mode)
    im.save(tmp_path / "a.png", optimize=True)
    assert read_image(tmp_path / "a.png").shape[-2:] == (37, 21)


def test_corrupt_jpeg_is_named(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = bytearray((tmp_path / "a.jpg").read_bytes())
    (tmp_path / "cut.jpg").write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(DataError, match=r"cut\.jpg: truncated image"):
        read_image(tmp_path / "cut.jpg")


def test_masks_threshold_at_half_range_and_count_non_binary_pixels(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[0, :2] = 255
    m[1, 0] = 127  # below half range: background
    m[1, 1] = 128  # at half range: lesion
    Image.fromarray(m).save(tmp_path / "m.png")
    mask, st = mask_pixels(decode(tmp_path / "m.png"))
    assert mask.sum() == 3 and mask[1, 1] and not mask[1, 0]
    assert st.non_binary == pytest.approx(2 / 16) and st.coverage == pytest.approx(3 / 16)
    Image.fromarray((m > 127).astype(np.uint8)).save(tmp_path / "01.png")  # a 0/1 export
    mask01, st01 = mask_pixels(decode(tmp_path / "01.png"))
    assert np.array_equal(mask01, mask) and st01.zero_one and st01.non_binary == 0
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = m  # red-on-black colour mask: luma would put 255 red below half range
    Image.fromarray(red).save(tmp_path / "red.png")
    assert np.array_equal(mask_pixels(decode(tmp_path / "red.png"))[0], mask)
