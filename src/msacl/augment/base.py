"""The contract shared by every strong augmentation family (MSACL Sec. 3.2, CCD Sec. 2.1).

A family is a set of classes ``n = 0..K-1``; class 0 is always the identity (the "normal" class
A_0). Families work on batched tensors with an explicit generator, on whatever device the batch is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from msacl.augment.functional import avoid_syncs, uniform


@dataclass
class StrongOutput:
    """Result of a strong augmentation.

    Attributes:
        images: augmented images, same dtype/range as the input. Shape: (B, C, H, W).
        labels: class index n of each image. Shape: (B,).
        masks: union mask of the altered pixels (MedMix lesions, cutout holes, pasted patches), or
            all zeros where the family changes the whole image geometry. Shape: (B, 1, H, W).
        extras: family-specific tensors, e.g. MedMix's per-lesion alpha ``lesion_alpha`` (B, K, H, W),
            ``placement`` (B, K) fallback levels and ``boxes`` (B, K, 4): a family whose class counts
            pasted regions returns their ``boxes`` so that the weak views keep them (``WeakAugment``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class StrongBase:
    """Shared checks and helpers of the concrete families; subclasses implement ``_apply``."""

    name: ClassVar[str] = "strong"
    num_classes: int = 4
    class_names: tuple[str, ...] = ()

    def __call__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator,
        sources: torch.Tensor | None = None,
    ) -> StrongOutput:
        """Apply class ``labels[i]`` to image ``x[i]``.

        Args:
            x: normal images in [0, 1]. Shape: (B, C, H, W).
            labels: class of each image, in ``0..num_classes-1``. Shape: (B,).
            generator: the only source of randomness, on ``x.device`` (a CPU generator also works).
            sources: other normal images to cut lesion patches from (MedMix, CutPaste); when None,
                MedMix uses the batch itself rolled by one and CutPaste the image itself (as in
                Li et al., 2021). Shape: (B, C, H, W).
        """
        x, labels = self._check(x, labels, sources)
        out = self._apply(x, labels, generator=generator, sources=sources)
        out.images = out.images.to(x.dtype)  # per-image factors are float32; keep the input's precision
        out.masks = out.masks.to(x.dtype)
        return out

    def _apply(
        self, x: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator, sources: torch.Tensor | None
    ) -> StrongOutput:
        raise NotImplementedError

    def random_labels(self, n: int, *, generator: torch.Generator, device: torch.device | str | None = None
                      ) -> torch.Tensor:
        """``n`` classes drawn uniformly from ``0..num_classes-1``. Shape: (n,)."""
        u = uniform((n,), 0.0, float(self.num_classes), generator=generator, device=device or generator.device)
        return u.long().clamp_(max=self.num_classes - 1)

    def _check(
        self, x: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name}: expected a float (B, C, H, W) image batch, got {got}")
        labels = torch.as_tensor(labels)  # checked where they are: reading a GPU tensor's range would wait for it
        if labels.shape != (x.shape[0],) or labels.is_floating_point():
            raise ValueError(f"{self.name}: labels must be integers of shape ({x.shape[0]},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()
        if labels.numel() and avoid_syncs(labels):
            torch._assert_async(((labels >= 0) & (labels < self.num_classes)).all(),
                                f"{self.name}: labels must lie in 0..{self.num_classes - 1}")
        elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in 0..{self.num_classes - 1}, "
                             f"got {int(labels.min())}..{int(labels.max())}")
        labels = labels.to(x.device)
        if sources is not None and sources.shape[1:] != x.shape[1:]:
            raise ValueError(f"{self.name}: sources must be (B', {x.shape[1]}, {x.shape[2]}, {x.shape[3]}) "
                             f"like the images, got {tuple(sources.shape)}")
        if sources is not None and sources.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: need one source image per image ({x.shape[0]}), "
                             f"got {sources.shape[0]}")
        return x, labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"
