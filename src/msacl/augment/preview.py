"""A picture of what the network is trained on: rows = images, columns = classes 0..K-1 (MSACL Fig. 3)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from msacl.augment.base import StrongBase
from msacl.augment.weak import WeakAugment
from msacl.runs import atomic_write_bytes


@dataclass
class PreviewGrid:
    """Panels of a preview.

    Attributes:
        strong: image r under class n. Shape: (R, K, C, H, W).
        masks: the family's altered-pixel mask of each panel. Shape: (R, K, 1, H, W).
        weak: a weak view of each strong panel, or None. Shape: (R, K, C, S, S).
        class_names: column titles, K of them.
    """

    strong: torch.Tensor
    masks: torch.Tensor
    weak: torch.Tensor | None
    class_names: tuple[str, ...]


def preview_grid(images: torch.Tensor, family: StrongBase, *, generator: torch.Generator,
                 sources: torch.Tensor | None = None, weak: WeakAugment | None = None) -> PreviewGrid:
    """Every class of ``family`` applied to every image (and, with ``weak``, a weak view of each panel).

    Args:
        images: normal images in [0, 1]. Shape: (R, C, H, W).
        family: the strong family.
        generator: source of randomness.
        sources: images to cut lesion patches from, one per row. Shape: (R, C, H, W).
        weak: weak views to show in a second block of rows.
    """
    r, k = images.shape[0], family.num_classes
    labels = torch.arange(k, device=images.device).repeat(r)
    x = images.repeat_interleave(k, dim=0)
    src = None if sources is None else sources.repeat_interleave(k, dim=0)
    out = family(x, labels, generator=generator, sources=src)
    weak_panels = None
    if weak is not None:
        v = weak(out.images, generator=generator)
        weak_panels = v.view(r, k, *v.shape[1:])
    names = tuple(family.class_names) or tuple(str(n) for n in range(k))
    return PreviewGrid(out.images.view(r, k, *images.shape[1:]), out.masks.view(r, k, 1, *images.shape[2:]),
                       weak_panels, names)


def save_preview(path: str | Path, grid: PreviewGrid, *, title: str | None = None, outline: bool = False,
                 panel_inches: float = 1.6, dpi: int = 120) -> Path:
    """Draw ``grid`` as a PNG with column titles; ``outline`` draws each panel's mask contour in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [("", grid.strong, grid.masks)]
    if grid.weak is not None:
        blocks.append(("weak view", grid.weak, None))
    r, k = grid.strong.shape[:2]
    rows = r * len(blocks)
    fig, axes = plt.subplots(rows, k, figsize=(k * panel_inches, rows * panel_inches + (0.5 if title else 0.2)),
                             squeeze=False, layout="constrained")
    for bi, (label, panels, masks) in enumerate(blocks):
        for i in range(r):
            for n in range(k):
                ax = axes[bi * r + i, n]
                img = panels[i, n].detach().float().cpu().clamp(0, 1)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
                if outline and masks is not None and masks[i, n].any():
                    ax.contour(masks[i, n, 0].detach().float().cpu().numpy(), levels=[0.5], colors="yellow",
                               linewidths=0.6)
                ax.set_xticks([])
                ax.set_yticks([])
                if bi == 0 and i == 0:
                    ax.set_title(grid.class_names[n], fontsize=9)
                if n == 0 and i == 0 and label:
                    ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
