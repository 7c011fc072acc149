"""Geometric strong families: rotation, half-swap permutation and 2x2 jigsaw (CCD Fig. 2 right, MSACL Fig. 6).

These change the whole image's layout, so their ``masks`` are all zeros.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from msacl.augment import functional as AF
from msacl.augment.base import StrongBase, StrongOutput


def _zeros_mask(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x[:, :1])


class Rotation(StrongBase):
    """Class k rotates by k x 90 degrees (``torch.rot90`` k times over (H, W)); needs square images.

    >>> out = Rotation()(torch.rand(4, 3, 8, 8), torch.arange(4), generator=torch.Generator())
    >>> out.images.shape
    torch.Size([4, 3, 8, 8])
    """

    name = "rotation"
    num_classes = 4
    class_names = ("0°", "90°", "180°", "270°")

    def _apply(self, x, labels, *, generator, sources):
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"rotation needs square images, got {x.shape[2]}x{x.shape[3]}")
        out = x.clone()
        for k in range(1, 4):  # each image has one class, so out still holds x where labels == k
            out = AF.apply_where(labels == k, lambda t, k=k: torch.rot90(t, k, dims=(2, 3)), out)
        return StrongOutput(out, labels, _zeros_mask(x))


def swap_halves(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[A | B] -> [B | A] along ``dim``, A being the first ``n // 2`` rows/columns."""
    n = x.shape[dim]
    return torch.roll(x, shifts=n - n // 2, dims=dim)


class Permutation(StrongBase):
    """Half swaps (CCD's permutation): 0 none, 1 left/right halves swapped, 2 top/bottom, 3 both.

    >>> x = torch.arange(4.).view(1, 1, 2, 2)
    >>> Permutation()(x, torch.tensor([3]), generator=torch.Generator()).images.flatten().tolist()
    [3.0, 2.0, 1.0, 0.0]
    """

    name = "permutation"
    num_classes = 4
    class_names = ("none", "swap left/right", "swap top/bottom", "swap both")

    def _apply(self, x, labels, *, generator, sources):
        out = x.clone()
        lr = ((labels == 1) | (labels == 3)).view(-1, 1, 1, 1)
        tb = ((labels == 2) | (labels == 3)).view(-1, 1, 1, 1)
        out = torch.where(lr, swap_halves(out, 3), out)
        out = torch.where(tb, swap_halves(out, 2), out)
        return StrongOutput(out, labels, _zeros_mask(x))


# Tiles are numbered 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right. The default classes move
# the tiles round the square by 0, 1, 2 and 3 steps clockwise (tiles keep their orientation): any two
# classes differ in every tile, and only the two-step move coincides with a `Permutation` class.
CYCLIC_TILE_PERMUTATIONS = ((0, 1, 2, 3), (2, 0, 3, 1), (3, 2, 1, 0), (1, 3, 0, 2))


def jigsaw_permutations(num_classes: int) -> tuple[tuple[int, ...], ...]:
    """A fixed set of 2x2 tile permutations, identity first.

    Starts from the four cyclic moves and adds, greedily, the permutation farthest (in Hamming distance)
    from those chosen, ties broken in lexicographic order, so the set is the same on every machine.
    """
    if not 2 <= num_classes <= 24:
        raise ValueError(f"a 2x2 jigsaw has 2..24 classes, got {num_classes}")
    chosen = list(CYCLIC_TILE_PERMUTATIONS[:num_classes])
    rest = [p for p in itertools.permutations(range(4)) if p not in chosen]
    while len(chosen) < num_classes:
        best = max(rest, key=lambda p: (min(sum(a != b for a, b in zip(p, q, strict=True)) for q in chosen),
                                        tuple(-v for v in p)))
        chosen.append(best)
        rest.remove(best)
    return tuple(chosen)


class Jigsaw(StrongBase):
    """2x2 jigsaw: class n puts input tile ``perm[n][t]`` at tile position t; needs even H and W.

    Args:
        num_classes: number of permutations used (2..24), see :func:`jigsaw_permutations`.
        permutations: explicit list of tile permutations instead; the first must be the identity.
    """

    name = "jigsaw"

    def __init__(self, num_classes: int = 4, permutations: Sequence[Sequence[int]] | None = None):
        perms = tuple(tuple(int(v) for v in p) for p in permutations) if permutations else \
            jigsaw_permutations(num_classes)
        if any(sorted(p) != [0, 1, 2, 3] for p in perms):
            raise ValueError(f"jigsaw permutations must each be a permutation of 0..3, got {perms}")
        if perms[0] != (0, 1, 2, 3):
            raise ValueError("the first jigsaw permutation (class 0) must be the identity (0, 1, 2, 3)")
        if len(set(perms)) != len(perms):
            raise ValueError(f"jigsaw permutations must be distinct, got {perms}")
        self.permutations = perms
        self.num_classes = len(perms)
        self.class_names = tuple("identity" if i == 0 else "tiles " + "".join(map(str, p))
                                 for i, p in enumerate(perms))

    def _apply(self, x, labels, *, generator, sources):
        h, w = x.shape[2:]
        if h % 2 or w % 2:
            raise ValueError(f"jigsaw needs even image sides, got {h}x{w}")
        th, tw = h // 2, w // 2
        # (B, C, 2, th, 2, tw) -> tiles (B, 4, C, th, tw)
        tiles = x.view(*x.shape[:2], 2, th, 2, tw).permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], 4, x.shape[1], th, tw)
        perm = torch.tensor(self.permutations, device=x.device)[labels]  # (B, 4)
        moved = tiles.gather(1, perm.view(-1, 4, 1, 1, 1).expand_as(tiles))
        out = moved.view(x.shape[0], 2, 2, x.shape[1], th, tw).permute(0, 3, 1, 4, 2, 5).reshape_as(x)
        return StrongOutput(out.contiguous(), labels, _zeros_mask(x))

    def __repr__(self) -> str:
        return f"Jigsaw(permutations={self.permutations})"
