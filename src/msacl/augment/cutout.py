"""Cutout as a strong family: class n has n holes (DeVries & Taylor, 2017; MSACL Fig. 6 left "Cut")."""

from __future__ import annotations

from typing import Literal

import torch

from msacl.augment import functional as AF
from msacl.augment.base import StrongBase, StrongOutput
from msacl.augment.placement import Boxes, place_boxes


class Cutout(StrongBase):
    """Class n in {0, ..., max_holes} erases n square holes, kept apart so that they stay n regions.

    The original fills holes with 0 in mean-normalised input, i.e. with the mean colour; ``fill="mean"``
    does that with the image's own per-channel mean, ``"zero"`` paints them black and ``"noise"`` fills
    them with uniform noise.

    Args:
        max_holes: largest number of holes (``num_classes = max_holes + 1``).
        size: range of the hole side as a fraction of the shorter image side.
        fill: "mean", "zero" or "noise".
        margin: minimum gap in pixels between holes.
    """

    name = "cutout"

    def __init__(self, max_holes: int = 3, size: tuple[float, float] = (0.15, 0.3),
                 fill: Literal["mean", "zero", "noise"] = "mean", margin: int = 2):
        if max_holes < 1:
            raise ValueError(f"max_holes must be at least 1, got {max_holes}")
        if not 0 < size[0] <= size[1] <= 1:
            raise ValueError(f"size must satisfy 0 < low <= high <= 1, got {size}")
        if fill not in ("mean", "zero", "noise"):
            raise ValueError(f"fill must be 'mean', 'zero' or 'noise', got {fill!r}")
        self.max_holes, self.size, self.fill, self.margin = int(max_holes), tuple(size), fill, int(margin)
        self.num_classes = self.max_holes + 1
        self.class_names = tuple(f"{n} hole{'s' if n != 1 else ''}" for n in range(self.num_classes))

    def _apply(self, x, labels, *, generator, sources):
        b, c, h, w = x.shape
        dev = x.device
        side = min(h, w)
        placed: list[Boxes] = []
        mask = torch.zeros(b, 1, h, w, dtype=torch.bool, device=dev)
        ys, xs = AF.pixel_grid(h, w, device=dev, dtype=torch.long)
        for j in range(self.max_holes):
            s = AF.uniform(b, *self.size, generator=generator, device=dev)
            hs = (s * side).round().long().clamp_(1, side)
            top, left, level = place_boxes(hs, hs, image_size=(h, w), allowed=None, avoid=placed,
                                           margin=self.margin, generator=generator)
            box = Boxes(top, left, hs, hs, labels > j, level)
            placed.append(box)
            inside = ((ys >= top.view(-1, 1, 1)) & (ys < (top + hs).view(-1, 1, 1))
                      & (xs >= left.view(-1, 1, 1)) & (xs < (left + hs).view(-1, 1, 1)))
            mask |= (inside & box.active.view(-1, 1, 1)).unsqueeze(1)
        if self.fill == "mean":
            value = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        elif self.fill == "zero":
            value = torch.zeros_like(x)
        else:
            value = AF.uniform(x.shape, 0, 1, generator=generator, device=dev).to(x.dtype)
        out = torch.where(mask, value, x)
        return StrongOutput(out, labels, mask.to(x.dtype))
