"""Batched image operations with per-image parameters, shared by the weak views and the strong families.

Every function takes a batch ``x`` of shape (B, C, H, W) in [0, 1] (C = 1 or 3) and per-image parameters
of shape (B,), and runs as a handful of tensor kernels on ``x.device``: no Python loop over images.
The colour operations follow ``torchvision.transforms.v2.functional`` (same formulas), so one image
through these equals one image through torchvision; the tests check that.

Host synchronisation: on the CPU an operation that applies to some images of a batch runs on those images
only (``nonzero``), which is cheapest there. On a GPU that index would make the host wait for the device at
every call, so there the operation runs on every image and ``torch.where`` keeps it where it applies: the
same values, no wait (:func:`avoid_syncs`; :func:`sync_free` forces either way, e.g. in tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale

_SYNC_FREE: ContextVar[bool | None] = ContextVar("msacl_sync_free", default=None)


def avoid_syncs(x: torch.Tensor) -> bool:
    """Whether augmentations of ``x`` avoid host synchronisations (data-dependent shapes, ``int(tensor)``):
    on any device but the CPU, unless :func:`sync_free` says otherwise."""
    forced = _SYNC_FREE.get()
    return x.device.type != "cpu" if forced is None else forced


@contextmanager
def sync_free(enabled: bool = True) -> Iterator[None]:
    """Within the block, augmentations avoid host synchronisations (``enabled``) or not, on every device."""
    token = _SYNC_FREE.set(enabled)
    try:
        yield
    finally:
        _SYNC_FREE.reset(token)


def apply_where(sel: torch.Tensor, fn, x: torch.Tensor, *params: torch.Tensor | None) -> torch.Tensor:
    """``fn(x, *params)`` for the images where ``sel`` holds, ``x`` elsewhere; ``fn`` works per image with per-image
    ``params`` (None passes through). On the CPU only the selected images run, written into ``x`` in place; where
    host syncs are avoided every image runs and ``torch.where`` keeps the result (module docstring).

    Shape: sel (B,) bool, x (B, ...), each param (B, ...) or None -> (B, ...).
    """
    if avoid_syncs(x):
        return torch.where(sel.view(-1, *([1] * (x.ndim - 1))), fn(x, *params), x)
    idx = sel.nonzero().squeeze(1)
    if idx.numel():
        x[idx] = fn(x[idx], *(p if p is None else p[idx] for p in params))
    return x


def uniform(shape: Sequence[int] | int, low: float, high: float, *, generator: torch.Generator,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform draws in [low, high) from ``generator`` (on its own device), moved to ``device``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand(shape, generator=generator, device=generator.device)
    u = low + (high - low) * u
    return u if device is None else u.to(device)


def normal(shape: Sequence[int], *, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Standard normal draws from ``generator``, moved to ``device``."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def _b(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (the image itself when C = 1). Shape: (B, C, H, W) -> (B, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shape: x (B, C, H, W), factor (B,)."""
    return (x * _b(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Blend with the mean luma (of the whole image, or ``mean`` when given, e.g. a patch's mean).

    Shape: x (B, C, H, W), factor (B,), mean (B,).
    """
    if mean is None:
        mean = grey(x).mean(dim=(1, 2, 3))
    return (_b(factor) * x + (1 - _b(factor)) * _b(mean)).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the luma image; a no-op on 1-channel images. Shape: x (B, C, H, W), factor (B,)."""
    if x.shape[1] == 1:
        return x
    return (_b(factor) * x + (1 - _b(factor)) * grey(x)).clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """Shape: (B, 3, H, W) -> (B, 3, H, W) with hue in [0, 1) (torchvision's formula, fewer kernels)."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    crd = torch.where(cr > 0, cr, torch.ones_like(cr))
    h = torch.where(maxc == r, (g - b) / crd, torch.where(maxc == g, (b - r) / crd + 2.0, (r - g) / crd + 4.0))
    h = torch.remainder(h / 6.0, 1.0)
    s = cr / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Shape: (B, 3, H, W) -> (B, 3, H, W).

    Channel ``c`` is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n_c + 6h) mod 6`` and n = (5, 3, 1):
    the same values as the sector-by-sector table, in a few element-wise kernels.
    """
    h, s, v = x[:, :1], x[:, 1:2], x[:, 2:]
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]); a no-op on 1-channel images.

    Shape: x (B, C, H, W), shift (B,).
    """
    if x.shape[1] == 1:
        return x
    # rgb_to_hsv then hsv_to_rgb, fused: v s = max - min and the hue sector in [0, 6) are all the round
    # trip needs, so saturation is never divided out and multiplied back.
    r, g, b = x[:, :1], x[:, 1:2], x[:, 2:]
    maxc = torch.maximum(torch.maximum(r, g), b)
    cr = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = torch.where(cr > 0, cr, torch.ones_like(cr)).reciprocal_()
    h6 = torch.where(maxc == r, g - b, torch.where(maxc == g, b - r + 2.0 * cr, r - g + 4.0 * cr)).mul_(inv)
    h6 += 6.0 * shift.view(-1, 1, 1, 1)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(h6 + n, 6.0)
    return maxc - cr * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """Greyscale image with the input's number of channels. Shape: (B, C, H, W) -> (B, C, H, W)."""
    return grey(x).expand_as(x).contiguous()


def color_jitter(
    x: torch.Tensor,
    *,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    order: torch.Tensor,
    contrast_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's ColorJitter with per-image factors and a per-image order of the four operations.

    An image whose factors are (1, 1, 1, 0) is returned unchanged (up to the HSV round trip only when
    its hue factor is non-zero: hue is skipped for images with a zero shift).

    Shape: x (B, C, H, W); brightness, contrast, saturation, hue (B,); order (B, 4), a permutation of
    0..3 (brightness, contrast, saturation, hue) per row; contrast_mean (B,) or None.
    """
    out = x.clone()
    for step in range(4):
        for op in range(4):
            sel = order[:, step] == op
            if op == 0:
                out = apply_where(sel & (brightness != 1), adjust_brightness, out, brightness)
            elif op == 1:
                out = apply_where(sel & (contrast != 1), adjust_contrast, out, contrast, contrast_mean)
            elif op == 2:
                out = apply_where(sel & (saturation != 1), adjust_saturation, out, saturation)
            else:
                out = apply_where(sel & (hue != 0), adjust_hue, out, hue)
    return out


def random_order(n: int, k: int, *, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """One random permutation of ``0..k-1`` per row. Shape: (n, k)."""
    return uniform((n, k), 0.0, 1.0, generator=generator, device=device).argsort(dim=1)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma, as torchvision's gaussian_blur builds them.

    Shape: sigma (B,) -> (B, size).
    """
    r = (size - 1) * 0.5
    t = torch.linspace(-r, r, size, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t.unsqueeze(0) / sigma.unsqueeze(1)).pow(2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image and reflect padding (as torchvision).

    Shape: x (B, C, H, W), sigma (B,) -> (B, C, H, W).
    """
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if kernel_size == 1 or x.shape[0] == 0:
        return x.clone()
    b, c, h, w = x.shape
    pad = kernel_size // 2
    if pad >= min(h, w):
        raise ValueError(f"blur kernel of size {kernel_size} is too large for {h}x{w} images")
    k = gaussian_kernels(sigma.to(x.dtype), kernel_size).repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    return y.view(b, c, h, w)


def bezier_curves(p1: torch.Tensor, p2: torch.Tensor, steps: int = 65) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of cubic Bezier curves from (0, 0) to (1, 1) with control points ``p1``, ``p2`` in [0, 1]^2.

    With control points inside the unit square both coordinates are non-decreasing in t (the
    derivative's Bernstein form is a(1-t)^2 + 2b t(1-t) + c t^2 with a, c >= 0 and b >= -sqrt(ac)),
    so each curve is the graph of a monotonic map [0, 1] -> [0, 1] (Models Genesis' intensity curve).

    Shape: p1, p2 (B, 2) -> xs, ys (B, steps), xs sorted.
    """
    t = torch.linspace(0, 1, steps, device=p1.device, dtype=p1.dtype).unsqueeze(0)
    c1, c2, c3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
    xs = c1 * p1[:, :1] + c2 * p2[:, :1] + c3
    ys = c1 * p1[:, 1:] + c2 * p2[:, 1:] + c3
    # Round-off can break the monotonicity by an ulp; searchsorted needs sorted rows.
    return torch.cummax(xs, dim=1).values, torch.cummax(ys, dim=1).values


def apply_curve(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Map every value of image b through the piecewise-linear curve (xs[b], ys[b]).

    Shape: x (B, C, H, W), xs, ys (B, T) with xs sorted along T -> (B, C, H, W).
    """
    return _interp(x.reshape(x.shape[0], -1), xs, ys).view_as(x)


def _interp(v: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation per row. Shape: v (B, M), xs, ys (B, T) -> (B, M)."""
    t = xs.shape[1]
    i = torch.searchsorted(xs.contiguous(), v.contiguous()).clamp_(1, t - 1)
    x0, x1 = xs.gather(1, i - 1), xs.gather(1, i)
    y0, y1 = ys.gather(1, i - 1), ys.gather(1, i)
    w = ((v - x0) / (x1 - x0).clamp_min(1e-12)).clamp_(0, 1)
    return y0 + w * (y1 - y0)


def apply_curve_lut(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, size: int = 256) -> torch.Tensor:
    """:func:`apply_curve` through a ``size``-entry look-up table per image (values clamped to [0, 1]).

    Resampling the curve at ``size`` evenly spaced inputs turns the per-pixel binary search into a gather;
    the result differs from :func:`apply_curve` by the curve's curvature over 1 / (size - 1).

    Shape: x (B, C, H, W), xs, ys (B, T) -> (B, C, H, W).
    """
    b = x.shape[0]
    grid = torch.linspace(0, 1, size, device=x.device, dtype=x.dtype).expand(b, size)
    lut = _interp(grid, xs.to(x.dtype), ys.to(x.dtype))  # (B, size)
    pos = x.reshape(b, -1).clamp(0, 1) * (size - 1)
    i0 = pos.floor().long().clamp_(max=size - 2)
    w = pos - i0
    y0, y1 = lut.gather(1, i0), lut.gather(1, i0 + 1)
    return (y0 + w * (y1 - y0)).view_as(x)


def fov_mask(x: torch.Tensor, *, threshold: float, erode: int) -> torch.Tensor:
    """Field of view: pixels whose max over channels exceeds ``threshold``, eroded by ``erode`` pixels.

    Endoscopy frames have a black border outside the lens' field of view; erosion also removes isolated
    bright specks (text overlays, compression noise) in that border. Shape: (B, C, H, W) -> (B, 1, H, W) bool.
    """
    m = x.amax(dim=1, keepdim=True) > threshold
    if erode > 0:
        # Separable erosion by a (2e+1)^2 square: AND of shifted copies along each axis. Padding with True
        # treats the outside as field of view, so an image with no border keeps its edge pixels.
        h, w = m.shape[2:]
        p = F.pad(m, (0, 0, erode, erode), value=True)
        m = p[:, :, : h].clone()
        for d in range(1, 2 * erode + 1):
            m &= p[:, :, d : d + h]
        p = F.pad(m, (erode, erode), value=True)
        m = p[..., : w].clone()
        for d in range(1, 2 * erode + 1):
            m &= p[..., d : d + w]
    return m


def integral_image(mask: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero first row and column. Shape: (B, 1, H, W) -> (B, H+1, W+1) int64."""
    s = mask[:, 0].to(torch.int64).cumsum(1).cumsum(2)
    return F.pad(s, (1, 0, 1, 0))


def box_sums(table: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: torch.Tensor, w: torch.Tensor
             ) -> torch.Tensor:
    """Sum of the mask over boxes [y0, y0+h) x [x0, x0+w) from its summed-area table.

    Shape: table (B, H+1, W+1); y0, x0 (B, T); h, w (B, 1) or (B, T) -> (B, T).
    """
    wp = table.shape[2]
    flat = table.reshape(table.shape[0], -1)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, yy * wp + xx)

    y1, x1 = y0 + h, x0 + w
    return at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``out[b, :, i, j] = x[b, :, i + dy[b], j + dx[b]]`` with indices clamped at the border (exact copy).

    Shape: x (B, C, H, W), dy, dx (B,) int64 -> (B, C, H, W).
    """
    b, _, h, w = x.shape
    iy = (torch.arange(h, device=x.device).unsqueeze(0) + dy.unsqueeze(1)).clamp_(0, h - 1)  # (B, H)
    ix = (torch.arange(w, device=x.device).unsqueeze(0) + dx.unsqueeze(1)).clamp_(0, w - 1)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return x[bi, :, iy.unsqueeze(2), ix.unsqueeze(1)].permute(0, 3, 1, 2)


def _window_index(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, ph: int, pw: int,
                  batch_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, _, h, w = x.shape
    n = top.shape[0]
    iy = (top.view(-1, 1) + torch.arange(ph, device=x.device)).clamp_(0, h - 1).view(n, ph, 1)
    ix = (left.view(-1, 1) + torch.arange(pw, device=x.device)).clamp_(0, w - 1).view(n, 1, pw)
    bi = torch.arange(n, device=x.device) if batch_index is None else batch_index
    return bi.view(n, 1, 1), iy, ix


def crop_windows(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, ph: int, pw: int,
                 batch_index: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i] = x[b_i, :, top[i]:top[i]+ph, left[i]:left[i]+pw]``, indices clamped at the border, with
    ``b_i = batch_index[i]`` (or i).

    Shape: x (B, C, H, W), top, left, batch_index (N,) int64 -> (N, C, ph, pw).
    """
    bi, iy, ix = _window_index(x, top, left, ph, pw, batch_index)
    return x[bi, :, iy, ix].permute(0, 3, 1, 2)


def paste_windows(x: torch.Tensor, windows: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  batch_index: torch.Tensor | None = None) -> None:
    """In place: ``x[b_i, :, top[i]:top[i]+ph, left[i]:left[i]+pw] = windows[i]``; windows must lie inside x.

    Shape: x (B, C, H, W), windows (N, C, ph, pw), top, left, batch_index (N,) int64.
    """
    bi, iy, ix = _window_index(x, top, left, *windows.shape[2:], batch_index)
    x[bi, :, iy, ix] = windows.permute(0, 2, 3, 1).to(x.dtype)


def pixel_grid(h: int, w: int, *, device: torch.device, dtype: torch.dtype = torch.float32
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates of the pixel centres. Shape: (1, H, 1), (1, 1, W)."""
    ys = torch.arange(h, device=device, dtype=dtype).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=dtype).view(1, 1, w)
    return ys, xs


def log_uniform(shape: Sequence[int] | int, low: float, high: float, *, generator: torch.Generator,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Draws whose logarithm is uniform in [log low, log high) (aspect ratios)."""
    return torch.exp(uniform(shape, math.log(low), math.log(high), generator=generator, device=device))
