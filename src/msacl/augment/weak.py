"""The weak distribution A_0: SimCLR's augmentations on a batch at once (CCD Sec. 3.2, MSACL Sec. 3.1).

CCD: "All weak augmentations in A_p are the same as SimCLR (i.e., colour jittering, random grey scale,
crop, resize, and Gaussian blur)". The defaults below are SimCLR's (Chen et al., 2020, App. A).
Crop, resize and flip are one ``affine_grid``/``grid_sample`` call; colour jitter, greyscale and blur
use per-image parameters, so a batch costs a few kernels however large it is.

Views of a strong image whose class is a count of pasted regions (MedMix's n lesions) must still show
them, or the label n is wrong: a free 0.2-1 crop drops the lesion of a class-1 image in about a quarter
of its views. Given the regions' ``boxes``, the crop is drawn from the same proposals conditioned on
keeping ``box_keep`` of every box's area; rows without boxes draw exactly as they would without them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from msacl.augment import functional as AF


@dataclass
class WeakConfig:
    """Settings of the weak views; every probability applies independently per image.

    Attributes:
        crop_scale: range of the crop's area as a fraction of the image (RandomResizedCrop ``scale``).
        crop_ratio: range of the crop's aspect ratio w/h, drawn log-uniformly.
        hflip_p: probability of a horizontal flip.
        vflip_p: probability of a vertical flip (0 in SimCLR; useful for images with no up/down).
        jitter_p: probability of the colour jitter.
        brightness, contrast, saturation: jitter strengths; factors are drawn from [1 - s, 1 + s].
        hue: hue jitter strength; shifts are drawn from [-hue, hue] (at most 0.5).
        grey_p: probability of converting to greyscale (kept with C channels).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's sigma in pixels of the output image.
        blur_kernel_frac: kernel size as a fraction of the output size (rounded up to odd, at least 3).
        antialias: when the input is more than twice the output size, shrink it first with an
            antialiased resize so that down-scaling crops do not alias.
        box_keep: fraction of each given box's area a crop must keep (see :meth:`WeakAugment.crop_params`);
            0 ignores the boxes.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    antialias: bool = True
    box_keep: float = 0.5

    def __post_init__(self) -> None:
        for name in ("hflip_p", "vflip_p", "jitter_p", "grey_p", "blur_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WeakConfig.{name} must be a probability in [0, 1], got {v}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WeakConfig.{name} must lie in [0, 1], got {v}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"WeakConfig.hue must lie in [0, 0.5], got {self.hue}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"WeakConfig.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"WeakConfig.crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"WeakConfig.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        if not 0.0 <= self.box_keep <= 1.0:
            raise ValueError(f"WeakConfig.box_keep must lie in [0, 1], got {self.box_keep}")
        if not 0.0 <= self.blur_kernel_frac < 1.0:
            raise ValueError(f"WeakConfig.blur_kernel_frac must lie in [0, 1), got {self.blur_kernel_frac}")


class WeakAugment:
    """Random weak views of a batch: resized crop, flips, colour jitter, greyscale, Gaussian blur.

    >>> g = torch.Generator().manual_seed(0)
    >>> WeakAugment(32)(torch.rand(4, 3, 64, 64), generator=g).shape
    torch.Size([4, 3, 32, 32])
    >>> WeakAugment(32, blur_p=0.0).cfg.blur_p   # keyword arguments override the config
    0.0

    Args:
        size: output side length in pixels.
        cfg: settings (SimCLR's by default).
        **overrides: fields of :class:`WeakConfig` to change.
    """

    def __init__(self, size: int, cfg: WeakConfig | None = None, **overrides: Any):
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        cfg = cfg or WeakConfig()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(WeakConfig)}
        if unknown:
            raise TypeError(f"unknown WeakConfig field(s) {sorted(unknown)}")
        self.cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        self.size = int(size)
        k = math.ceil(self.cfg.blur_kernel_frac * self.size)
        self.blur_kernel = max(3, k + (k % 2 == 0))

    def __repr__(self) -> str:
        return f"WeakAugment(size={self.size}, cfg={self.cfg})"

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator, boxes: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """One weak view per image; the crop keeps ``cfg.box_keep`` of each box in ``boxes``.

        Args:
            x: images in [0, 1].
            generator: the only source of randomness.
            boxes: regions every view must show (e.g. MedMix's ``extras["boxes"]``) as top, left, height,
                width in pixels of ``x``; entries with height <= 0 are absent. None: no constraint.

        Shape:
            x (B, C, H, W), boxes (B, K, 4) -> (B, C, size, size).
        """
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float (B, C, H, W) image batch, got {x.dtype} {tuple(x.shape)}")
        cfg, b, dev = self.cfg, x.shape[0], x.device
        if boxes is not None and (boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4):
            raise ValueError(f"boxes must be ({b}, K, 4) as top, left, height, width, got {tuple(boxes.shape)}")
        h0, w0 = x.shape[2:]
        x = self._shrink(x)
        if boxes is not None:
            # Boxes follow the shrink into the pixels the crop is drawn in.
            fy, fx = x.shape[2] / h0, x.shape[3] / w0
            boxes = boxes.to(device=dev, dtype=torch.float32) * torch.tensor([fy, fx, fy, fx], device=dev)
        y = self.crop_flip(x, generator=generator, boxes=boxes)

        jit = AF.uniform(b, 0, 1, generator=generator, device=dev) < cfg.jitter_p
        factors = [AF.uniform(b, 1 - s, 1 + s, generator=generator, device=dev)
                   for s in (cfg.brightness, cfg.contrast, cfg.saturation)]
        hue = AF.uniform(b, -cfg.hue, cfg.hue, generator=generator, device=dev)
        order = AF.random_order(b, 4, generator=generator, device=dev)
        one = torch.ones_like(hue)
        br, co, sa = (torch.where(jit, f, one) for f in factors)
        y = AF.color_jitter(y, brightness=br, contrast=co, saturation=sa, hue=torch.where(jit, hue, 0 * hue),
                            order=order)

        grey = AF.uniform(b, 0, 1, generator=generator, device=dev) < cfg.grey_p
        if y.shape[1] > 1 and (AF.avoid_syncs(y) or grey.any()):  # no wait for the device (see ``functional``)
            y = torch.where(grey.view(-1, 1, 1, 1), AF.to_grey(y), y)

        blur = AF.uniform(b, 0, 1, generator=generator, device=dev) < cfg.blur_p
        sigma = AF.uniform(b, *cfg.blur_sigma, generator=generator, device=dev)
        if self.blur_kernel // 2 < self.size:
            y = AF.apply_where(blur, lambda t, s: AF.gaussian_blur(t, s, self.blur_kernel), y, sigma)
        return y.clamp_(0, 1).to(x.dtype)

    def _shrink(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if not self.cfg.antialias or min(h, w) <= 2 * self.size:
            return x
        f = 2 * self.size / min(h, w)
        return F.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode="bilinear",
                             antialias=True, align_corners=False).clamp_(0, 1)

    def crop_params(self, b: int, h: int, w: int, *, generator: torch.Generator, device: torch.device,
                    tries: int = 10, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Crop boxes as RandomResizedCrop draws them: ``tries`` attempts, else the central crop.

        With ``boxes``, an attempt counts only if some position keeps at least ``keep = cfg.box_keep`` of
        every box's area, and the position is drawn uniformly among those. The product of the kept
        fractions along y and x is not an interval of positions, so each axis must keep ``sqrt(keep)`` of
        the box (a sufficient condition whose valid positions form a rectangle, so no further draws are
        needed). When no attempt fits the boxes, the first that fits the image (else the central fallback
        size) is grown just enough. Rows without boxes use the same draws and get exactly the crop they get
        without.

        Args:
            b, h, w: batch size and image size in pixels.
            generator: the only source of randomness.
            device: device of the results.
            tries: attempts per image.
            boxes: top, left, height, width of the regions to keep, in pixels; absent where height <= 0.
                Shape: (B, K, 4).

        Returns:
            top, left, height, width in input pixels, each of shape (B,).
        """
        cfg = self.cfg
        area = h * w * AF.uniform((b, tries), *cfg.crop_scale, generator=generator, device=device)
        ratio = AF.log_uniform((b, tries), *cfg.crop_ratio, generator=generator, device=device)
        cw = torch.sqrt(area * ratio).round()
        ch = torch.sqrt(area / ratio).round()
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        keep, fit = None, ok
        if boxes is not None and cfg.box_keep > 0:
            keep = _BoxKeep(boxes.to(device=device, dtype=torch.float32), math.sqrt(cfg.box_keep), h, w)
            fit = ok & keep.fits(ch, cw)
        # The first attempt that fits; where none fits the boxes, the first that fits the image (grown below).
        first = torch.where(fit.any(dim=1), fit.to(torch.int8).argmax(dim=1), ok.to(torch.int8).argmax(dim=1))
        cw, ch = cw.gather(1, first.unsqueeze(1)).squeeze(1), ch.gather(1, first.unsqueeze(1)).squeeze(1)
        # torchvision's fallback: the central crop with the ratio clamped into range.
        in_ratio = w / h
        if in_ratio < cfg.crop_ratio[0]:
            fw, fh = w, round(w / cfg.crop_ratio[0])
        elif in_ratio > cfg.crop_ratio[1]:
            fw, fh = round(h * cfg.crop_ratio[1]), h
        else:
            fw, fh = w, h
        found = ok.any(dim=1)
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        u = AF.uniform((2, b), 0, 1, generator=generator, device=device)
        if keep is None:  # exactly the draws of before boxes existed
            top = torch.where(found, torch.floor(u[0] * (h - ch + 1)), torch.full_like(ch, (h - fh) // 2))
            left = torch.where(found, torch.floor(u[1] * (w - cw + 1)), torch.full_like(cw, (w - fw) // 2))
            return top, left, ch, cw
        # No attempt fits the boxes (about 1 % of class-3 MedMix images): grow the first attempt that fits the
        # image (else the fallback size) to the smallest size that fits, then bring the ratio back into range.
        # Elementwise on every row rather than behind ``grow.any()``, which would wait for the GPU.
        grow = ~fit.any(dim=1) & keep.present
        ch = torch.where(grow, torch.maximum(ch, keep.need_h), ch)
        cw = torch.where(grow, torch.maximum(cw, keep.need_w), cw)
        lo_r, hi_r = cfg.crop_ratio
        ch = torch.where(grow & (cw > ch * hi_r), torch.ceil(cw / hi_r), ch).clamp(max=h)
        cw = torch.where(grow & (cw < ch * lo_r), torch.ceil(ch * lo_r), cw).clamp(max=w)
        lo_t, hi_t, lo_l, hi_l = (v.squeeze(1) for v in keep.ranges(ch.unsqueeze(1), cw.unsqueeze(1)))
        # Uniform among the valid positions; without boxes the range is [0, h - ch], as above.
        top = (lo_t + torch.floor(u[0] * (hi_t - lo_t + 1))).clamp(min=0).minimum(h - ch)
        left = (lo_l + torch.floor(u[1] * (hi_l - lo_l + 1))).clamp(min=0).minimum(w - cw)
        central = ~found & ~keep.present
        top = torch.where(central, torch.full_like(ch, (h - fh) // 2), top)
        left = torch.where(central, torch.full_like(cw, (w - fw) // 2), left)
        return top, left, ch, cw

    def crop_flip(self, x: torch.Tensor, *, generator: torch.Generator, boxes: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Random resized crop (keeping ``boxes``, see :meth:`crop_params`) and flips as one ``grid_sample``.

        Shape: x (B, C, H, W), boxes (B, K, 4) -> (B, C, size, size).
        """
        b, c, h, w = x.shape
        dev, cfg = x.device, self.cfg
        top, left, ch, cw = self.crop_params(b, h, w, generator=generator, device=dev, boxes=boxes)
        flips = AF.uniform((2, b), 0, 1, generator=generator, device=dev) < torch.tensor(
            [[cfg.hflip_p], [cfg.vflip_p]], device=dev)
        sx = torch.where(flips[0], -1.0, 1.0)
        sy = torch.where(flips[1], -1.0, 1.0)
        # Normalised coordinates (align_corners=False): the crop [left, left+cw) maps to [-1, 1] of the output.
        theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0] = sx * cw / w
        theta[:, 0, 2] = (2 * left + cw) / w - 1
        theta[:, 1, 1] = sy * ch / h
        theta[:, 1, 2] = (2 * top + ch) / h - 1
        grid = F.affine_grid(theta, [b, c, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _BoxKeep:
    """Crop positions that keep a fraction ``f`` of every present box along each axis.

    A crop [t, t + c) keeps f of the box [s, s + e) iff c >= f e, t <= s + (1 - f) e and
    t + c >= s + f e; over all boxes that is an interval of t per crop size.

    Shape: boxes (B, K, 4) as top, left, height, width; absent where height <= 0.
    """

    def __init__(self, boxes: torch.Tensor, f: float, h: int, w: int):
        present = boxes[..., 2] > 0  # (B, K)
        self.present = present.any(dim=1)
        inf = torch.full_like(boxes[..., 0], math.inf)
        self.h, self.w = h, w
        self.axes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for start, extent in ((boxes[..., 0], boxes[..., 2]), (boxes[..., 1], boxes[..., 3])):
            end_min = torch.where(present, start + f * extent, -inf).amax(1, keepdim=True)  # crop must reach
            start_max = torch.where(present, start + (1 - f) * extent, inf).amin(1, keepdim=True)  # must start by
            side_min = torch.where(present, f * extent, 0 * extent).amax(1, keepdim=True)
            self.axes.append((end_min, start_max, side_min))
        # Smallest crop sides with a valid position (integers: the position is rounded inwards).
        (ey, sy, my), (ex, sx, mx) = self.axes
        self.need_h = torch.maximum(_ceil(ey) - _floor(sy), _ceil(my)).squeeze(1).clamp(0, h)
        self.need_w = torch.maximum(_ceil(ex) - _floor(sx), _ceil(mx)).squeeze(1).clamp(0, w)

    def ranges(self, ch: torch.Tensor, cw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Valid tops lo_t..hi_t and lefts lo_l..hi_l (integers). Shape: ch, cw (B, T) -> 4 x (B, T)."""
        out = []
        for (end_min, start_max, _), c, size in zip(self.axes, (ch, cw), (self.h, self.w), strict=True):
            out += [_ceil((end_min - c).clamp(min=0)), _floor(torch.minimum(start_max, size - c))]
        return tuple(out)

    def fits(self, ch: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
        """Whether crops of these sizes have a valid position. Shape: (B, T) -> (B, T) bool."""
        lo_t, hi_t, lo_l, hi_l = self.ranges(ch, cw)
        (_, _, my), (_, _, mx) = self.axes
        return (lo_t <= hi_t) & (lo_l <= hi_l) & (ch >= my - _EPS) & (cw >= mx - _EPS)


_EPS = 1e-4  # slack for float error in f * extent, so exact integer bounds are not lost to rounding


def _ceil(v: torch.Tensor) -> torch.Tensor:
    return torch.ceil(v - _EPS)


def _floor(v: torch.Tensor) -> torch.Tensor:
    return torch.floor(v + _EPS)
