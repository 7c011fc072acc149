"""Patches of the local (two-scale) models: the grid they are cut on, cutting them, and putting per-patch
scores or maps back in place.

Patches are ``patch`` x ``patch`` squares every ``stride`` pixels, plus a last row / column flush with the
image's edge; ``extract_patches`` orders them image-major, row by row, and every function here reads that
order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def patch_grid(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one side: every ``stride`` pixels, plus a last patch flush with the edge."""
    if size < patch:
        raise ValueError(f"image side {size} is smaller than the patch size {patch}")
    offs = list(range(0, size - patch + 1, stride))
    if offs[-1] != size - patch:
        offs.append(size - patch)
    return offs


def extract_patches(x: torch.Tensor, *, patch: int = 32, stride: int = 16) -> torch.Tensor:
    """All grid patches of each image, image-major.

    Shape: (B, C, H, W) -> (B * P, C, patch, patch), P = len(patch_grid(H)) * len(patch_grid(W)).
    """
    rows, cols = patch_grid(x.shape[2], patch, stride), patch_grid(x.shape[3], patch, stride)
    tiles = [x[:, :, r:r + patch, c:c + patch] for r in rows for c in cols]
    return torch.stack(tiles, 1).flatten(0, 1)


def sample_patches(x: torch.Tensor, k: int, generator: torch.Generator, *, patch: int = 32,
                   stride: int = 16) -> torch.Tensor:
    """``k`` grid patches per image, chosen at random with ``generator``.

    Shape: (B, C, H, W) -> (B * k, C, patch, patch).
    """
    rows, cols = patch_grid(x.shape[2], patch, stride), patch_grid(x.shape[3], patch, stride)
    b = x.shape[0]
    r = torch.randint(len(rows), (b, k), generator=generator, device=generator.device).cpu()
    c = torch.randint(len(cols), (b, k), generator=generator, device=generator.device).cpu()
    tiles = [x[i, :, rows[r[i, j]]:rows[r[i, j]] + patch, cols[c[i, j]]:cols[c[i, j]] + patch]
             for i in range(b) for j in range(k)]
    return torch.stack(tiles)


def spread_patch_scores(scores: torch.Tensor, hw: tuple[int, int], *, patch: int = 32,
                        stride: int = 16) -> torch.Tensor:
    """Give every pixel the mean score of the patches that cover it.

    Shape: scores (B, P) in ``extract_patches`` order -> (B, 1, H, W).
    """
    rows, cols = patch_grid(hw[0], patch, stride), patch_grid(hw[1], patch, stride)
    total = scores.new_zeros(scores.shape[0], 1, *hw)
    count = scores.new_zeros(1, 1, *hw)
    p = 0
    for r in rows:
        for c in cols:
            total[:, :, r:r + patch, c:c + patch] += scores[:, p].view(-1, 1, 1, 1)
            count[:, :, r:r + patch, c:c + patch] += 1
            p += 1
    return total / count


def in_chunks(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor,
              chunk: int = 512) -> tuple[torch.Tensor, ...]:
    """Apply ``fn`` to slices of ``x`` along dim 0 and concatenate each output (bounded memory)."""
    outs = [fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def place_patch_maps(maps: torch.Tensor, hw: tuple[int, int], *, patch: int = 32, stride: int = 16) -> torch.Tensor:
    """Put each patch's map back where the patch was cut and average where patches overlap.

    Shape:
        maps: (B, P, 1, patch, patch) in ``extract_patches`` order.
        returns: (B, 1, H, W).
    """
    rows, cols = patch_grid(hw[0], patch, stride), patch_grid(hw[1], patch, stride)
    total = maps.new_zeros(maps.shape[0], 1, *hw)
    count = maps.new_zeros(1, 1, *hw)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        total[:, :, r:r + patch, c:c + patch] += maps[:, k]
        count[:, :, r:r + patch, c:c + patch] += 1
    return total / count
