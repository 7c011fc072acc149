"""Helpers shared by the detectors: map smoothing and upsampling, image checks and resizing.

The feature taps (``FrozenFeatures``, ``fold_batchnorm``, ``feature_grid``) live in ``msacl.models.features``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from msacl.errors import DataError


def gaussian_kernel1d(sigma: float, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of width ``2 * int(4 * sigma + 0.5) + 1`` (the size anomalib uses).

    Shape: (K,).
    """
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _pad_mode(radius: int, n: int) -> str:
    # Reflection needs pad < size; tiny maps are padded by replication instead.
    return "reflect" if radius < n else "replicate"


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (scipy's ``mode="mirror"``); ``sigma <= 0`` returns the input.

    Shape: (B, 1, H, W) -> (B, 1, H, W).
    """
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, dtype=maps.dtype, device=maps.device)
    r = k.numel() // 2
    h, w = maps.shape[-2:]
    x = F.conv2d(F.pad(maps, (r, r, 0, 0), mode=_pad_mode(r, w)), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=_pad_mode(r, h)), k.view(1, 1, -1, 1))


@functools.lru_cache(maxsize=32)
def _axis_operator(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """Linear interpolation n_in -> n_out followed by the Gaussian blur, along one axis, as a matrix.

    Shape: (n_out, n_in), float64.
    """
    basis = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # (n_in, 1, n_in): one unit signal per row
    up = F.interpolate(basis, size=n_out, mode="linear", align_corners=False)  # (n_in, 1, n_out)
    if sigma > 0:
        k = gaussian_kernel1d(sigma, dtype=torch.float64)
        r = k.numel() // 2
        up = F.conv1d(F.pad(up, (r, r), mode=_pad_mode(r, n_out)), k.view(1, 1, -1))
    return up[:, 0].T.contiguous()


def to_image_map(patch_map: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Patch-level scores -> pixel map: bilinear upsampling to the image size, then Gaussian blur.

    Both steps are linear and separable, so they are applied as one (H, h) and one (w, W) matrix:
    ``A_h @ map @ A_w^T`` equals ``gaussian_blur(interpolate(map))`` at a fraction of the cost.

    Shape: (B, h, w) -> (B, 1, H, W).
    """
    # int(): under ONNX export tracing shapes are tensors, which would miss the cache and record the operator's
    # construction (in float64) in the graph instead of the operator itself
    h, w = (int(v) for v in patch_map.shape[-2:])
    a_h = _axis_operator(h, int(size[0]), float(sigma)).to(patch_map)
    a_w = _axis_operator(w, int(size[1]), float(sigma)).to(patch_map)
    return (a_h @ patch_map @ a_w.T).unsqueeze(1)


def check_images(x: torch.Tensor, who: str, *, image_size: tuple[int, int] | None = None,
                 channels: int | None = None) -> None:
    """Raise ``DataError`` unless ``x`` is a (B, C, H, W) batch of images with finite values in [0, 1].

    C must be ``channels`` when given, else 1 or 3; (H, W) must be ``image_size`` when given (detectors that
    resize their input accept any size). ``who`` starts the message ("padim.predict", "igd: training batch 3").
    """
    want = (channels,) if channels else (1, 3)
    if x.ndim != 4 or x.shape[1] not in want or (image_size is not None and tuple(x.shape[-2:]) != tuple(image_size)):
        c = channels or "1|3"
        hw = "H, W" if image_size is None else f"{image_size[0]}, {image_size[1]}"
        note = "" if image_size is None else " (the detector's image_size)"
        raise DataError(f"{who}: expected images of shape (B, {c}, {hw}){note}, got {tuple(x.shape)}")
    if x.numel():
        # One pass and one read-back: NaN propagates into both, and a NaN or an infinity fails the range test.
        lo, hi = torch.stack(torch.aminmax(x)).tolist()
        if not (0 <= lo and hi <= 1):
            raise DataError(f"{who}: pixel values must be finite and in [0, 1] (got min {lo:.3g}, max {hi:.3g})")


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize images to ``size`` x ``size`` (antialiased bilinear) unless they already are. Shape: (B, C, H, W)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
