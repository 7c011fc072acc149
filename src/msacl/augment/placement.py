"""Where to put a box in each image: inside the field of view, apart from the boxes already placed.

All images of a batch are handled at once: ``tries`` candidate positions per image are drawn, checked
with a summed-area table of the allowed-pixel mask and a box-intersection test, and the first candidate
that passes the strictest constraint level available is kept. Images whose candidates all miss the
allowed region (a small field of view) are searched exhaustively.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msacl.augment import functional as AF

# Constraint levels, strictest first (the values returned in ``Boxes.level``).
LEVEL_INSIDE = 0  # whole footprint inside the allowed mask, apart from other boxes
LEVEL_CENTRE = 1  # centre inside the allowed mask, apart from other boxes
LEVEL_APART = 2  # anywhere in the image, apart from other boxes
LEVEL_ANY = 3  # anywhere in the image


@dataclass
class Boxes:
    """Axis-aligned boxes, one per image. All fields have shape (B,) and are int64 except ``active``."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    active: torch.Tensor  # bool: whether the box exists (e.g. the image has this many lesions)
    level: torch.Tensor  # which constraint level the position satisfies (LEVEL_*)


def place_boxes(
    height: torch.Tensor,
    width: torch.Tensor,
    *,
    image_size: tuple[int, int],
    allowed: torch.Tensor | None,
    avoid: list[Boxes],
    margin: int,
    generator: torch.Generator,
    tries: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a top-left corner per image for a box of the given size.

    Args:
        height, width: box size per image, at most the image size. Shape: (B,) int64.
        image_size: (H, W).
        allowed: summed-area table of the pixels a box may cover (see ``functional.integral_image``),
            or None for the whole image. Shape: (B, H+1, W+1).
        avoid: boxes placed earlier; a new box keeps ``margin`` pixels away from the active ones.
        margin: minimum gap in pixels between boxes (1 keeps masks apart under 8-connectivity).
        generator: source of the candidate positions.
        tries: candidates per image.

    Returns:
        top, left, level, each of shape (B,): the first candidate at the strictest level any candidate
        of that image reaches (see ``LEVEL_*``), or, when no candidate lies inside the allowed region but
        some position does, the position nearest to the first candidate among the strictest ones.
    """
    h_img, w_img = image_size
    b = height.shape[0]
    dev = height.device
    u = AF.uniform((2, b, tries), 0, 1, generator=generator, device=dev)
    hh, ww = height.unsqueeze(1), width.unsqueeze(1)
    top = torch.floor(u[0] * (h_img - hh + 1)).long().clamp_(min=0)
    left = torch.floor(u[1] * (w_img - ww + 1)).long().clamp_(min=0)
    levels = _levels(top, left, hh, ww, allowed, avoid, margin)  # (B, 4, T)
    level, pick = _first(levels)
    top, left = top.gather(1, pick).squeeze(1), left.gather(1, pick).squeeze(1)

    # Random candidates can all miss a small valid region: search every position for those images, and
    # take the valid one nearest to the first candidate (no further draws, so an image's result does not
    # depend on the rest of the batch). Where host syncs are avoided every image is searched: one already
    # placed inside has no stricter level to gain, so it keeps its place and the result is the same.
    if AF.avoid_syncs(level):
        miss, n = slice(None), b
    else:
        miss = (level > LEVEL_INSIDE).nonzero().squeeze(1)
        n = miss.numel()
        if n == 0:
            return top, left, level
    gy, gx = torch.meshgrid(torch.arange(h_img, device=dev), torch.arange(w_img, device=dev), indexing="ij")
    gy, gx = gy.reshape(1, -1), gx.reshape(1, -1)
    sub_h, sub_w = hh[miss], ww[miss]
    fits = (gy + sub_h <= h_img) & (gx + sub_w <= w_img)
    ty, tx = gy.expand(n, -1), gx.expand(n, -1)
    sub_avoid = [Boxes(o.top[miss], o.left[miss], o.height[miss], o.width[miss], o.active[miss], o.level[miss])
                 for o in avoid]
    grid = _levels(torch.minimum(ty, h_img - sub_h), torch.minimum(tx, w_img - sub_w), sub_h, sub_w,
                   None if allowed is None else allowed[miss], sub_avoid, margin)
    grid &= fits.unsqueeze(1)
    dist = (gy - top[miss, None]).pow(2) + (gx - left[miss, None]).pow(2)  # (b', H*W)
    g_level = grid.any(dim=2).to(torch.int8).argmax(dim=1)
    ok = grid.gather(1, g_level.view(-1, 1, 1).expand(-1, 1, grid.shape[2])).squeeze(1)
    best = torch.where(ok, dist, torch.full_like(dist, torch.iinfo(dist.dtype).max)).argmin(dim=1)
    better = g_level.long() < level[miss]
    top[miss] = torch.where(better, gy[0, best], top[miss])
    left[miss] = torch.where(better, gx[0, best], left[miss])
    level[miss] = torch.where(better, g_level.long(), level[miss])
    return top, left, level


def _levels(top: torch.Tensor, left: torch.Tensor, hh: torch.Tensor, ww: torch.Tensor, allowed: torch.Tensor | None,
            avoid: list[Boxes], margin: int) -> torch.Tensor:
    """Which constraint levels each candidate meets. Shape: top, left (B, T); hh, ww (B, 1) -> (B, 4, T) bool."""
    apart = torch.ones_like(top, dtype=torch.bool)
    for o in avoid:
        ot, ol = o.top.unsqueeze(1), o.left.unsqueeze(1)
        oh, ow = o.height.unsqueeze(1), o.width.unsqueeze(1)
        hit = ((top < ot + oh + margin) & (ot < top + hh + margin)
               & (left < ol + ow + margin) & (ol < left + ww + margin))
        apart &= ~(hit & o.active.unsqueeze(1))
    if allowed is None:
        inside = centre = torch.ones_like(apart)
    else:
        inside = AF.box_sums(allowed, top, left, hh, ww) == hh * ww
        cy, cx = top + hh // 2, left + ww // 2
        centre = AF.box_sums(allowed, cy, cx, torch.ones_like(hh), torch.ones_like(ww)) > 0
    return torch.stack((inside & apart, centre & apart, apart, torch.ones_like(apart)), dim=1)


def _first(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Strictest level reached per row and the first candidate reaching it. Shape: (B, 4, T) -> (B,), (B, 1)."""
    b, _, t = levels.shape
    level = levels.any(dim=2).to(torch.int8).argmax(dim=1)  # LEVEL_ANY is always reached
    ok = levels.gather(1, level.view(b, 1, 1).expand(b, 1, t)).squeeze(1)
    return level.long(), ok.to(torch.int8).argmax(dim=1, keepdim=True)
