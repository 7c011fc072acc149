"""CutPaste as a strong family: 0 none, 1 cut-paste, 2 scar (Li et al., CVPR 2021, Sec. 3.1).

The defaults are the paper's: a rectangle of 2-15 % of the image area with aspect ratio in
(0.3, 1)U(1, 3.3), and a scar of width 2-16 px and length 10-25 px (for 256 px images, scaled here with
the image size) rotated by -45..45 degrees; both pasted after a colour jitter of 0.1.
"""

from __future__ import annotations

import math

import torch

from msacl.augment import functional as AF
from msacl.augment.base import StrongBase, StrongOutput


class CutPaste(StrongBase):
    """Cut a region (from ``sources``, or from the image itself when None, as in the paper) and paste it.

    Args:
        area: range of the rectangle's area as a fraction of the image (class 1).
        aspect: range of the rectangle's aspect ratio, drawn log-uniformly.
        scar_width, scar_length: ranges in pixels of a 256 px image (class 2).
        scar_angle: range of the scar's rotation in degrees.
        jitter: strength of the colour jitter on the pasted region (brightness, contrast, saturation, hue).
    """

    name = "cutpaste"
    num_classes = 3
    class_names = ("none", "cut-paste", "scar")

    def __init__(self, area: tuple[float, float] = (0.02, 0.15), aspect: tuple[float, float] = (0.3, 3.3),
                 scar_width: tuple[float, float] = (2, 16), scar_length: tuple[float, float] = (10, 25),
                 scar_angle: tuple[float, float] = (-45, 45), jitter: float = 0.1):
        if not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"area must satisfy 0 < low <= high <= 1, got {area}")
        if not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"aspect must satisfy 0 < low <= high, got {aspect}")
        if not 0 < scar_width[0] <= scar_width[1] or not 0 < scar_length[0] <= scar_length[1]:
            raise ValueError(f"scar sizes must be positive ranges, got {scar_width}, {scar_length}")
        if not 0 <= jitter <= 0.5:
            raise ValueError(f"jitter must lie in [0, 0.5], got {jitter}")
        self.area, self.aspect = tuple(area), tuple(aspect)
        self.scar_width, self.scar_length, self.scar_angle = tuple(scar_width), tuple(scar_length), tuple(scar_angle)
        self.jitter = jitter

    def _apply(self, x, labels, *, generator, sources):
        b, c, h, w = x.shape
        dev = x.device
        src = x if sources is None else sources
        scale = min(h, w) / 256
        # Rectangle (class 1) and scar (class 2) sizes; the class picks one per image.
        area = h * w * AF.uniform(b, *self.area, generator=generator, device=dev)
        ratio = AF.log_uniform(b, *self.aspect, generator=generator, device=dev)
        rect_w, rect_h = (area * ratio).sqrt(), (area / ratio).sqrt()
        scar_w = AF.uniform(b, *self.scar_width, generator=generator, device=dev) * scale
        scar_l = AF.uniform(b, *self.scar_length, generator=generator, device=dev) * scale
        angle = AF.uniform(b, *self.scar_angle, generator=generator, device=dev) * math.pi / 180
        scar = labels == 2
        rw = torch.where(scar, scar_w, rect_w).clamp(1, w)
        rh = torch.where(scar, scar_l, rect_h).clamp(1, h)
        angle = torch.where(scar, angle, torch.zeros_like(angle))
        # Half extents of the rotated region's bounding box, so that it fits where it is cut and pasted.
        ex = (rw / 2 * angle.cos().abs() + rh / 2 * angle.sin().abs()).clamp(max=w / 2)
        ey = (rw / 2 * angle.sin().abs() + rh / 2 * angle.cos().abs()).clamp(max=h / 2)
        u = AF.uniform((4, b), 0, 1, generator=generator, device=dev)
        cx_t, cy_t = ex + u[0] * (w - 2 * ex), ey + u[1] * (h - 2 * ey)
        cx_s, cy_s = ex + u[2] * (w - 2 * ex), ey + u[3] * (h - 2 * ey)

        ys, xs = AF.pixel_grid(h, w, device=dev)
        px, py = xs + 0.5 - cx_t.view(-1, 1, 1), ys + 0.5 - cy_t.view(-1, 1, 1)
        ca, sa = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        along, across = px * ca + py * sa, py * ca - px * sa
        region = (along.abs() <= rw.view(-1, 1, 1) / 2) & (across.abs() <= rh.view(-1, 1, 1) / 2)
        region = (region & (labels > 0).view(-1, 1, 1)).unsqueeze(1)  # (B, 1, H, W)

        dy = (cy_s - cy_t).round().long()
        dx = (cx_s - cx_t).round().long()
        patch = AF.translate(src, dy, dx)
        s = self.jitter
        patch = AF.color_jitter(
            patch,
            brightness=AF.uniform(b, 1 - s, 1 + s, generator=generator, device=dev),
            contrast=AF.uniform(b, 1 - s, 1 + s, generator=generator, device=dev),
            saturation=AF.uniform(b, 1 - s, 1 + s, generator=generator, device=dev),
            hue=AF.uniform(b, -s, s, generator=generator, device=dev),
            order=AF.random_order(b, 4, generator=generator, device=dev),
        )
        out = torch.where(region, patch, x)
        return StrongOutput(out, labels, region.to(x.dtype))
