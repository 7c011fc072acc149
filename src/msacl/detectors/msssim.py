"""SSIM and multi-scale SSIM for images of any size, with per-pixel SSIM maps for heat maps.

``pytorch_msssim.ms_ssim`` always uses five scales and asserts that the image is larger than
``(win_size - 1) * 16`` pixels, so the 32 x 32 patches and 64 px images these detectors work on are
below its minimum. ``ms_ssim`` here follows the same algorithm (Wang et al. 2003, Eq. 7; the same
Gaussian window, constants, ``relu`` of the contrast terms and 2 x 2 average pooling) but picks the
window and the number of scales from the image size. With five scales and a large enough image it
returns exactly what ``pytorch_msssim.ms_ssim`` returns; with fewer scales the first weights of the
standard five are renormalised to sum to one (for 32 x 32 patches with a 3 x 3 window this gives the
four weights the IGD release uses).

>>> x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
>>> ms_ssim(x, y).shape          # 4 scales, 3 x 3 window, picked from the size
torch.Size([2])
>>> ssim_map(x, y).shape         # per-pixel SSIM, averaged over channels
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang et al. (2003), finest scale first."""


def default_win_size(size: int) -> int:
    """The Gaussian window for an image whose smaller side is ``size`` pixels.

    The standard 11 x 11 window where five scales fit it (side > 160, ``pytorch_msssim``'s minimum),
    otherwise 3 x 3 as in the IGD release for small images and patches.
    """
    return 11 if size > 160 else 3


def default_levels(size: int, win_size: int) -> int:
    """The number of scales (at most 5) whose coarsest image is still at least ``win_size`` pixels."""
    if size < win_size:
        raise ValueError(f"image side {size} is smaller than the SSIM window {win_size}")
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and size // 2**levels >= win_size:
        levels += 1
    return levels


def gaussian_window(win_size: int, sigma: float = 1.5, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian window. Shape: (win_size,)."""
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"window size must be odd and positive, got {win_size}")
    coords = torch.arange(win_size, dtype=torch.float32) - win_size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    if like is not None:
        g = g.to(device=like.device, dtype=like.dtype)
    return g


def _filter(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding, per channel. Shape: (B, C, H, W) -> (B, C, H-w+1, W-w+1)."""
    # int(): a traced (ONNX export) channel count would give the kernel a shape ONNX cannot know
    c, k = int(x.shape[1]), win.numel()
    x = F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_components(x: torch.Tensor, y: torch.Tensor, *, win_size: int = 11, win_sigma: float = 1.5,
                    data_range: float = 1.0, k: tuple[float, float] = (0.01, 0.03),
                    same: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Local SSIM and contrast-structure maps (Wang et al. 2004, Eq. 13 with alpha = beta = gamma = 1).

    Args:
        x, y: images compared.
        same: reflect-pad so the maps keep the input size (for heat maps); otherwise only windows that
            fit inside the image are used (as ``pytorch_msssim``).

    Shape:
        x, y: (B, C, H, W).
        returns: ssim map and cs map, each (B, C, H', W') with H' = H (same) or H - win_size + 1.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    win = gaussian_window(win_size, win_sigma, like=x)
    if same:
        pad = [win_size // 2] * 4
        x, y = F.pad(x, pad, mode="reflect"), F.pad(y, pad, mode="reflect")
    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    var_x = _filter(x * x, win) - mu_x**2
    var_y = _filter(y * y, win) - mu_y**2
    cov = _filter(x * y, win) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return lum * cs, cs


def ssim(x: torch.Tensor, y: torch.Tensor, *, win_size: int | None = None, win_sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image.

    Shape:
        x, y: (B, C, H, W).
        returns: (B,).
    """
    win_size = win_size or default_win_size(min(x.shape[-2:]))
    s, _ = ssim_components(x, y, win_size=win_size, win_sigma=win_sigma, data_range=data_range)
    return s.flatten(1).mean(1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, win_size: int | None = None, win_sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM, averaged over channels, at the input resolution (reflect padding).

    Shape:
        x, y: (B, C, H, W).
        returns: (B, 1, H, W); 1 where the images agree locally.
    """
    win_size = win_size or default_win_size(min(x.shape[-2:]))
    s, _ = ssim_components(x, y, win_size=win_size, win_sigma=win_sigma, data_range=data_range, same=True)
    return s.mean(1, keepdim=True)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, levels: int | None = None, win_size: int | None = None,
            win_sigma: float = 1.5, data_range: float = 1.0, weights: Sequence[float] | None = None,
            k: tuple[float, float] = (0.01, 0.03)) -> torch.Tensor:
    """Multi-scale SSIM per image (Wang et al. 2003, Eq. 7), for any image size.

    Args:
        x, y: images in ``[0, data_range]``.
        levels: number of scales; default: as many (up to 5) as the image and window allow.
        win_size: odd Gaussian window; default ``default_win_size`` of the smaller side.
        weights: per-scale exponents, finest first; default the first ``levels`` of
            ``MS_SSIM_WEIGHTS`` renormalised to sum to 1.

    Shape:
        x, y: (B, C, H, W).
        returns: (B,), the mean over channels of the per-channel MS-SSIM.
    """
    side = min(x.shape[-2:])
    win_size = win_size or default_win_size(side)
    if weights is None:
        levels = levels or default_levels(side, win_size)
        w = torch.tensor(MS_SSIM_WEIGHTS[:levels])
        w = w / w.sum() if levels < len(MS_SSIM_WEIGHTS) else w
    else:
        w = torch.tensor(list(weights), dtype=torch.float32)
        if levels is not None and levels != w.numel():
            raise ValueError(f"{w.numel()} weights given for {levels} levels")
        levels = w.numel()
    if side // 2 ** (levels - 1) < win_size:
        raise ValueError(f"{levels} scales of a {side} px image are smaller than the {win_size} px window")
    w = w.to(device=x.device, dtype=x.dtype)
    factors = []
    for i in range(levels):
        s, cs = ssim_components(x, y, win_size=win_size, win_sigma=win_sigma, data_range=data_range, k=k)
        if i < levels - 1:
            factors.append(torch.relu(cs.flatten(2).mean(-1)))
            pad = [int(n) % 2 for n in x.shape[2:]]  # int(): a traced size would make padding a graph value
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    factors.append(torch.relu(s.flatten(2).mean(-1)))
    per_channel = torch.prod(torch.stack(factors) ** w.view(-1, 1, 1), dim=0)  # (B, C)
    return per_channel.mean(1)


def msi_score(m_global: torch.Tensor, m_local: torch.Tensor | None = None, *, nu: float = 0.5) -> torch.Tensor:
    """s_MSI = 1 - (nu * m_G + (1 - nu) * m_L) (CCD Sec. 2.2); ``1 - m_G`` without a local model.

    Shape:
        m_global, m_local: (B,) MS-SSIM of whole images / mean over each image's patches.
        returns: (B,).
    """
    m = m_global if m_local is None else nu * m_global + (1 - nu) * m_local
    return 1 - m
