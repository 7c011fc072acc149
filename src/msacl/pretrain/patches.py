"""Patches for the local model (32 x 32 crops) and for the patch-position task (MSACL Eq. 9, CCD Eq. 4).

Batched and generator-driven: every random choice is drawn from the ``generator`` passed in, on the
device of the images.
"""

from __future__ import annotations

import math

import torch

# Row-major positions of the 8 neighbours in the 3 x 3 grid (the centre cell (1, 1) is skipped):
# label p -> (row, col).
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """A ``size`` x ``size`` crop of every image at its own (top, left).

    Shape:
        x: (B, C, H, W); top, left: (B,) integer; output: (B, C, size, size).
    """
    b = x.shape[0]
    ar = torch.arange(size, device=x.device)
    rows = (top.view(b, 1) + ar).view(b, size, 1)
    cols = (left.view(b, 1) + ar).view(b, 1, size)
    out = x[torch.arange(b, device=x.device).view(b, 1, 1), :, rows, cols]  # (B, size, size, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _randint(high: torch.Tensor | int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform integers in [0, high] (inclusive), one per row; ``high`` may differ per row."""
    u = torch.rand(n, generator=generator, device=device)
    high_t = torch.as_tensor(high, device=device)
    return torch.minimum((u * (high_t + 1)).long(), high_t.long())


def random_crops(x: torch.Tensor, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """One uniformly placed ``size`` x ``size`` crop per image (the local model's training patches).

    Shape:
        x: (B, C, H, W) with H, W >= size; output: (B, C, size, size).
    """
    b, _, h, w = x.shape
    if h < size or w < size:
        raise ValueError(f"cannot crop {size} x {size} patches from {h} x {w} images")
    top = _randint(h - size, b, generator, x.device)
    left = _randint(w - size, b, generator, x.device)
    return crop(x, top, left, size)


def grid_geometry(height: int, width: int, patch: int | None, *, patch_frac: float = 0.75) -> tuple[int, int]:
    """(cell, patch) sizes of the 3 x 3 patch grid that fits an image.

    A cell is ``patch / patch_frac`` wide so that patches of adjacent cells are separated by a gap and
    can be jittered inside their cell (Doersch et al. 2015), which keeps the task from being solved by
    edge continuity. With ``patch=None`` (global model) or when three cells of the requested patch do
    not fit, the grid spans the image and the patch shrinks accordingly.
    """
    side = min(height, width)
    if patch is not None:
        cell = math.ceil(patch / patch_frac)
        if 3 * cell <= side:
            return cell, patch
    cell = side // 3
    patch = max(1, int(round(cell * patch_frac)))
    if cell < 2 or patch >= cell:
        raise ValueError(f"{height} x {width} images are too small for a 3 x 3 patch grid")
    return cell, patch


def patch_pairs(
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    patch: int | None = None,
    patch_frac: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre patch, one of its 8 neighbours and the neighbour's position label (MSACL Eq. 9).

    A 3 x 3 grid of cells is placed at a random position of each image; each patch sits at a random
    offset inside its cell, leaving a gap of at least half the cell's free space between neighbours
    (the gap + jitter of Doersch et al.).

    Args:
        x: images. Shape: (B, C, H, W).
        generator: source of every random choice.
        patch: patch side (e.g. 32 for the local model); None sizes the grid to the whole image.
        patch_frac: patch side / cell side.

    Returns:
        (centre, neighbour, labels). Shape: (B, C, p, p), (B, C, p, p), (B,) in 0..7.
    """
    b, _, h, w = x.shape
    cell, p = grid_geometry(h, w, patch, patch_frac=patch_frac)
    dev = x.device
    free = cell - p
    margin = math.ceil(free / 4)
    jitter = max(0, free - 2 * margin)
    gy = _randint(h - 3 * cell, b, generator, dev)
    gx = _randint(w - 3 * cell, b, generator, dev)
    labels = _randint(len(NEIGHBOURS) - 1, b, generator, dev)
    pos = torch.tensor(NEIGHBOURS, device=dev)[labels]  # (B, 2)

    def place(row: torch.Tensor | int, col: torch.Tensor | int) -> torch.Tensor:
        top = gy + torch.as_tensor(row, device=dev) * cell + margin + _randint(jitter, b, generator, dev)
        left = gx + torch.as_tensor(col, device=dev) * cell + margin + _randint(jitter, b, generator, dev)
        return crop(x, top, left, p)

    centre = place(1, 1)
    neighbour = place(pos[:, 0], pos[:, 1])
    return centre, neighbour, labels
