"""Decode one image or mask file: PNG, JPEG, BMP, TIFF (8/16 bit), WebP and DICOM.

Every reader returns values in [0, 1] and raises :class:`~msacl.errors.DataError` naming the file and what is
wrong (empty, truncated, corrupt, not an image, unreadable DICOM). 8-bit images stay 8-bit PIL images until
they are resized, which keeps decoding and antialiased resizing in Pillow's fast paths.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msacl.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})


def _err(path: Path, message: str, kind: str) -> DataError:
    """A DataError naming the file, tagged with a problem kind (see :class:`msacl.data.problems.Problem`)."""
    e = DataError(f"{path}: {message}")
    e.kind = kind  # type: ignore[attr-defined]
    e.problem = message  # type: ignore[attr-defined]
    return e


def is_hidden(name: str) -> bool:
    """Files a file manager leaves behind (.DS_Store, ._x AppleDouble, Thumbs.db): ignored, never errors."""
    return name.startswith(".") or name.lower() in HIDDEN_NAMES


def is_dicom_file(path: Path) -> bool:
    """A .dcm/.dicom file, or an extensionless file with the DICOM preamble ("DICM" at byte 128)."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS or is_dicom_file(path)


@dataclass
class Decoded:
    """A decoded file before resizing.

    Attributes:
        image: PIL image in mode "L" or "RGB" (8 bit) or "F" (float32 in [0, 1], one channel).
        mode: the source's colour mode as the user would name it, e.g. "RGB", "L", "I;16", "DICOM MONOCHROME1".
        channels: channels of the source (1 or 3; an alpha channel is not counted).
    """

    image: Image.Image
    mode: str
    channels: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the source."""
        return self.image.size


def decode(path: str | Path) -> Decoded:
    """Open and fully decode one image file (no resizing, no channel conversion).

    Raises:
        DataError: the file is missing, empty, truncated, corrupt, not an image or an unreadable DICOM.
    """
    path = Path(path)
    try:
        n_bytes = path.stat().st_size
    except OSError as e:
        raise _err(path, f"cannot be read ({e.strerror or e})", "unreadable") from e
    if n_bytes == 0:
        raise _err(path, "empty file (0 bytes)", "empty-file")
    if is_dicom_file(path):
        return _decode_dicom(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise _err(path, f"not an image file (extension '{path.suffix}'; supported: "
                   f"{', '.join(sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS))})", "not-image")
    im = None
    try:
        # No `with`: closing a loaded image destroys its pixels; load() already closes a single-frame file.
        im = Image.open(path)
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            raise _err(path, f"has {n_frames} frames; only single images are supported", "multi-frame")
        im.load()
        if im.format == "PNG":
            _check_png_pixel_data(path)
        return _normalise_pil(im, path)
    except DataError:
        if im is not None:
            im.close()
        raise
    except Image.UnidentifiedImageError as e:
        raise _err(path, "not a readable image (its content is no image format Pillow knows)", "corrupt") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if im is not None:
            im.close()
        text = str(e)
        if "truncat" in text.lower():
            raise _err(path, f"truncated image: the file ends before the image data does ({text})",
                       "truncated") from e
        raise _err(path, f"corrupt image ({text})", "corrupt") from e


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (first row, row step, first column, column step)
_ADAM7 = ((0, 8, 0, 8), (0, 8, 4, 8), (4, 8, 0, 4), (0, 4, 2, 4), (2, 4, 0, 2), (0, 2, 1, 2), (1, 2, 0, 1))


def png_pixel_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes of a PNG's decompressed pixel data (filter bytes included) as its header declares them."""
    bits = _PNG_CHANNELS[colour_type] * bit_depth
    if interlaced:
        passes = [((height - r0 + dr - 1) // dr, (width - c0 + dc - 1) // dc) for r0, dr, c0, dc in _ADAM7]
    else:
        passes = [(height, width)]
    return sum(h * (1 + (w * bits + 7) // 8) for h, w in passes if h > 0 and w > 0)


def _check_png_pixel_data(path: Path) -> None:
    """Pillow fills the rows of a PNG whose compressed pixel data (IDAT) ends early but cleanly with black and
    says nothing; such a file is an error here, as a file cut short is."""
    data = path.read_bytes()
    pos, header, idat = 8, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or header[3] not in _PNG_CHANNELS:
        return  # Pillow decoded it: nothing this check knows how to measure
    width, height, depth, colour, _, _, interlace = header
    want = png_pixel_bytes(width, height, depth, colour, interlace == 1)
    try:  # at most one byte beyond what the header declares: a decompression bomb stops there
        got = len(zlib.decompressobj().decompress(b"".join(idat), want + 1))
    except zlib.error:
        return  # Pillow decoded it despite the stream's error; its own errors are reported where it raises
    if got < want:
        raise _err(path, f"truncated image: its pixel data holds {got} of the {want} bytes its header declares "
                   f"({width} x {height}); the missing rows would decode as black", "truncated")


def _normalise_pil(im: Image.Image, path: Path) -> Decoded:
    mode = im.mode
    if mode in ("L", "RGB"):
        return Decoded(im, mode, 1 if mode == "L" else 3)
    if mode in ("1", "LA", "La"):
        return Decoded(im.convert("L"), mode, 1)
    if mode in ("RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        # Alpha is dropped, not composited: medical images use it (if at all) as an all-opaque channel.
        return Decoded(im.convert("RGB"), mode, 3)
    if mode in ("P", "PA"):
        rgb = im.convert("RGB")
        arr = np.asarray(rgb)
        grey = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
        return Decoded(rgb.convert("L") if grey else rgb, mode, 1 if grey else 3)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        elif mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            # Pillow opens 16-bit PNGs as "I" on some versions: same range as I;16.
            arr = arr / 65535.0
        elif not (arr.size and arr.min() >= 0 and arr.max() <= 1):
            arr = _minmax(arr)
        return Decoded(Image.fromarray(arr.astype(np.float32), mode="F"), mode, 1)
    raise _err(path, f"unsupported colour mode '{mode}'", "unsupported-mode")


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float64)
    return (arr - lo) / (hi - lo)


def dicom_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear VOI window (PS3.3 C.11.2.1.2.1), mapped to [0, 1].

    ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1].

    Shape:
        x: any; returns the same shape, float64.
    """
    w = max(float(width), 1.0)
    c = float(center)
    if w == 1.0:
        return (x > c - 0.5).astype(np.float64)
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def _first(value: object) -> float:
    # WindowCenter/WindowWidth may be multi-valued (several windows); the first is the default one.
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _decode_dicom(path: Path) -> Decoded:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as e:  # pragma: no cover - pydicom is a dependency
        raise _err(path, "reading DICOM needs pydicom (pip install pydicom)", "dicom") from e
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as e:
            raise _err(path, f"unreadable DICOM ({e})", "dicom") from e
    except Exception as e:
        raise _err(path, f"unreadable DICOM ({e})", "dicom") from e
    if "PixelData" not in ds:
        raise _err(path, "unreadable DICOM (no pixel data; is it a DICOM image?)", "dicom")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise _err(path, f"DICOM with {frames} frames; only single images are supported", "multi-frame")
    try:
        arr = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise _err(path, f"unreadable DICOM pixel data (transfer syntax {ts}: {e})", "dicom") from e
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] == 3:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        if bits == 8:
            return Decoded(Image.fromarray(arr.astype(np.uint8), mode="RGB"), f"DICOM {photometric}", 3)
        rgb = arr.astype(np.float64) / float(2**bits - 1)
        grey = (rgb @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
        return Decoded(Image.fromarray(grey, mode="F"), f"DICOM {photometric}", 3)
    if arr.ndim != 2:
        raise _err(path, f"unreadable DICOM (pixel array of shape {arr.shape})", "dicom")
    x = arr.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    x = x * slope + intercept
    if "WindowCenter" in ds and "WindowWidth" in ds:
        y = dicom_window(x, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        y = _minmax(x)
    if photometric == "MONOCHROME1":
        y = 1.0 - y  # MONOCHROME1 shows low values as white
    return Decoded(Image.fromarray(y.astype(np.float32), mode="F"), f"DICOM {photometric}", 1)


def to_channels(image: Image.Image, channels: int) -> np.ndarray:
    """Pixels of an "L"/"RGB"/"F" image as (H, W, channels): uint8 for 8-bit modes, float32 in [0, 1] for "F".

    RGB -> grey uses ITU-R 601 luma (Pillow's "L" conversion); grey -> RGB repeats the channel.
    """
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        arr = np.clip(arr, 0.0, 1.0)  # bilinear resampling of [0, 1] values stays in range up to rounding
        return np.repeat(arr[..., None], channels, axis=2)
    if channels == 1 and image.mode != "L":
        image = image.convert("L")
    elif channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image)
    return arr[..., None] if arr.ndim == 2 else arr


def resize(image: Image.Image, size: int | None, *, nearest: bool = False) -> Image.Image:
    """Resize to size x size (aspect ratio not kept, as in the papers); Pillow's bilinear is antialiased."""
    if size is None or image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 or float array -> (C, H, W) float32 tensor in [0, 1]."""
    t = torch.from_numpy(np.array(arr, order="C")).permute(2, 0, 1)  # a writable copy
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def read_image(path: str | Path, *, channels: int = 3, image_size: int | None = None) -> torch.Tensor:
    """Read one image as a float tensor in [0, 1].

    Args:
        path: PNG, JPEG, BMP, TIFF (8 or 16 bit), WebP or DICOM file.
        channels: 1 (grey) or 3 (RGB) output channels.
        image_size: resize to image_size x image_size (bilinear, antialiased); None keeps the native size.

    Returns:
        The image. Shape: (channels, H, W).

    Raises:
        DataError: naming the file and the problem.

        read_image("scan.dcm", channels=1, image_size=256)  # shape (1, 256, 256)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    d = decode(path)
    return to_tensor(to_channels(resize(d.image, image_size), channels))


@dataclass
class MaskStats:
    """What thresholding a mask found: pixels that were neither 0 nor the maximum, and the lesion fraction."""

    non_binary: float
    coverage: float
    zero_one: bool


def mask_pixels(d: Decoded) -> tuple[np.ndarray, MaskStats]:
    """Binary lesion mask of a decoded mask file, thresholded at half range.

    Colour masks use the maximum over channels, so a red-on-black mask is not lost to luma weights;
    0/1 masks (a common export) count as binary with 1 = lesion.

    Returns:
        (mask, stats) with mask a bool array. Shape: (H, W).
    """
    im = d.image
    if im.mode == "F":
        v = np.asarray(im, dtype=np.float32)
        binary = np.isin(v, (0.0, 1.0))
        return v >= 0.5, MaskStats(float(1.0 - binary.mean()), float((v >= 0.5).mean()), False)
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.size and arr.max() == 1:
        m = arr == 1
        return m, MaskStats(0.0, float(m.mean()), True)
    m = arr >= 128
    non_binary = float(((arr != 0) & (arr != 255)).mean())
    return m, MaskStats(non_binary, float(m.mean()), False)
