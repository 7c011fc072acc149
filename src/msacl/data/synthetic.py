"""A deterministic, clearly labelled synthetic data set: textured "tissue", with soft-edged blob lesions and
their masks in the abnormal test images.

It is written in the ``folder`` layout (train/normal, test/normal, test/abnormal, test/masks) with a
README.txt that says it is synthetic. Tests and ``msacl demo`` use it. By default the lesions are small,
soft-edged and of moderate contrast against tissue whose colour, texture and lighting vary from image to
image, so a detector separates them well but not trivially. ``msacl demo`` asks for larger, darker ones
(``lesion_radius``, ``lesion_strength``, ``lesion_contrast``), which a working pipeline separates almost
perfectly, so that a broken one shows; the normal images are the same either way.

>>> import tempfile
>>> root = write_synthetic(tempfile.mkdtemp() + "/syn", size=32, n_train=4, n_test_normal=2, n_test_abnormal=2)
>>> sorted(p.name for p in (root / "test").iterdir())
['abnormal', 'masks', 'normal']
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from msacl.errors import DataError
from msacl.runs import make_generator

README = """SYNTHETIC DATA - not medical images.

Written by msacl.data.synthetic.write_synthetic(size={size}, n_train={n_train}, n_test_normal={n_test_normal},
n_test_abnormal={n_test_abnormal}, channels={channels}, seed={seed}, lesion_radius={lesion_radius},
lesion_strength={lesion_strength}, lesion_contrast={lesion_contrast}).

Textured pink "tissue" with random colour, texture, folds and lighting; each abnormal test image has one
soft-edged darker, textured blob ("lesion"); test/masks holds its binary mask (PNG 0/255, same file name).
For tests and demos of the msacl pipeline only. Numbers measured on it say nothing about real data.
"""
MARKER = "SYNTHETIC DATA"


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, shape: tuple[int, ...] = ()) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _smooth_noise(size: int, cell: float, g: torch.Generator, channels: int = 1) -> torch.Tensor:
    """Value noise with features about ``cell`` pixels wide, in [0, 1].

    Shape:
        returns (channels, size, size).
    """
    k = max(2, round(size / cell) + 1)
    grid = torch.rand(1, channels, k, k, generator=g)
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1)


def _tissue(size: int, g: torch.Generator) -> torch.Tensor:
    """One normal image. Shape: (3, size, size), values in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.tensor([0.80, 0.45, 0.40]) + _u(g, -0.06, 0.06, (3,))
    tex = 0.5 * _smooth_noise(size, size / 3, g) + 0.3 * _smooth_noise(size, size / 8, g) \
        + 0.2 * _smooth_noise(size, 3.0, g)
    img = base[:, None, None] * (0.7 + 0.6 * (tex - 0.5))
    # Mucosal folds: bright ridges along a noise-warped direction.
    theta, freq, phase = _u(g, 0, math.pi), _u(g, 2.0, 5.0), _u(g, 0, 2 * math.pi)
    warp = 0.15 * (_smooth_noise(size, size / 4, g)[0] - 0.5)
    u = (xx * torch.cos(theta) + yy * torch.sin(theta) + warp) * freq * 2 * math.pi + phase
    img = img + _u(g, 0.02, 0.08) * torch.sin(u).clamp(min=0) ** 3
    # Uneven lighting with a random bright spot, as from an endoscope's light source.
    cy, cx = _u(g, 0.2, 0.8), _u(g, 0.2, 0.8)
    light = 1.0 - _u(g, 0.15, 0.4) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5
    img = img * light
    img = img + 0.012 * torch.randn(3, size, size, generator=g)
    return img.clamp(0, 1)


def _lesion(size: int, g: torch.Generator, radius: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft alpha and binary mask of one irregular blob. Shape: (size, size) each."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    r = float(_u(g, *radius)) * size
    cy, cx = (float(_u(g, 0.25, 0.75)) * size for _ in range(2))
    aspect, rot = float(_u(g, 0.7, 1.3)), float(_u(g, 0, math.pi))
    dy, dx = yy - cy, xx - cx
    a = dx * math.cos(rot) + dy * math.sin(rot)
    b = -dx * math.sin(rot) + dy * math.cos(rot)
    ang = torch.atan2(b, a)
    # Irregular outline: low harmonics of the angle perturb the radius.
    wobble = 1 + sum(float(_u(g, -0.12, 0.12)) * torch.cos(k * ang + float(_u(g, 0, 6.3))) for k in (2, 3, 5))
    d = torch.sqrt((a / (r * aspect)) ** 2 + (b * aspect / r) ** 2) / wobble
    alpha = torch.sigmoid((1 - d) * float(_u(g, 4.0, 8.0)))
    return alpha, d <= 1


def _abnormal(size: int, g: torch.Generator, radius: tuple[float, float], strength_range: tuple[float, float],
              contrast: float) -> tuple[torch.Tensor, torch.Tensor]:
    img = _tissue(size, g)
    alpha, mask = _lesion(size, g, radius)
    tint = torch.tensor([0.66, 0.46, 0.46]) + _u(g, -0.05, 0.05, (3,))  # darker, more saturated red
    tint = (1 - contrast * (1 - tint)).clamp(0, 1)
    tex = 0.8 + 0.4 * _smooth_noise(size, 2.5, g)
    strength = float(_u(g, *strength_range))
    lesion = img * tint[:, None, None] * tex
    w = alpha * strength
    return (img * (1 - w) + lesion * w).clamp(0, 1), mask


def _save(img: torch.Tensor, path: Path, channels: int) -> None:
    arr = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr, mode="RGB")
    # Low zlib effort: noisy textures barely compress, and level 6 made writing 5x slower.
    (im.convert("L") if channels == 1 else im).save(path, format="PNG", compress_level=1)


def write_synthetic(
    root: str | Path,
    *,
    size: int = 64,
    n_train: int = 64,
    n_test_normal: int = 24,
    n_test_abnormal: int = 24,
    channels: int = 3,
    seed: int = 0,
    lesion_radius: tuple[float, float] = (0.08, 0.15),
    lesion_strength: tuple[float, float] = (0.5, 0.9),
    lesion_contrast: float = 1.0,
) -> Path:
    """Write a synthetic data set in the ``folder`` layout; the same arguments always give the same files.

    Args:
        root: folder to write (created; if it already holds a synthetic set, that set is replaced; any other
            non-empty folder is refused).
        size: image side in pixels.
        n_train, n_test_normal, n_test_abnormal: image counts.
        channels: 1 (grey PNG) or 3 (RGB PNG).
        seed: seed of every random choice.
        lesion_radius: range of a lesion's radius, as a fraction of ``size``.
        lesion_strength: range of a lesion's peak opacity over the tissue (1: the lesion's colour alone).
        lesion_contrast: how much darker and redder than the tissue a lesion is (1: as the tests' set; 2: twice
            as far from the tissue's colour).

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if size < 16:
        raise DataError(f"size must be at least 16 pixels, got {size}")
    for name, (lo, hi), top in (("lesion_radius", lesion_radius, 0.5), ("lesion_strength", lesion_strength, 1.0)):
        if not 0 < lo <= hi <= top:
            raise DataError(f"{name} must be a range (low, high) with 0 < low <= high <= {top:g}, got {(lo, hi)}")
    if not lesion_contrast > 0:
        raise DataError(f"lesion_contrast must be positive, got {lesion_contrast}")
    if root.exists() and any(root.iterdir()):
        readme = root / "README.txt"
        if not (readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)):
            raise DataError(f"{root}: folder exists and is not a synthetic data set; choose an empty folder")
        for sub in ("train", "val", "test"):
            shutil.rmtree(root / sub, ignore_errors=True)
    dirs = {k: root / k for k in ("train/normal", "test/normal", "test/abnormal", "test/masks")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    g = make_generator(seed)
    for i in range(n_train):
        _save(_tissue(size, g), dirs["train/normal"] / f"normal_{i:04d}.png", channels)
    for i in range(n_test_normal):
        _save(_tissue(size, g), dirs["test/normal"] / f"normal_{i:04d}.png", channels)
    for i in range(n_test_abnormal):
        img, mask = _abnormal(size, g, lesion_radius, lesion_strength, lesion_contrast)
        _save(img, dirs["test/abnormal"] / f"lesion_{i:04d}.png", channels)
        Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L").save(dirs["test/masks"] / f"lesion_{i:04d}.png")
    (root / "README.txt").write_text(README.format(
        size=size, n_train=n_train, n_test_normal=n_test_normal, n_test_abnormal=n_test_abnormal, channels=channels,
        seed=seed, lesion_radius=tuple(lesion_radius), lesion_strength=tuple(lesion_strength),
        lesion_contrast=lesion_contrast))
    return root
