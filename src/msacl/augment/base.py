"""The contract shared by every strong augmentation family (MSACL Sec. 3.2, CCD Sec. 2.1).

A family is a set of classes ``n = 0..K-1``; class 0 is always the identity (the "normal" class
A_0). Families work on batched tensors with an explicit generator, on whatever device the batch is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class StrongOutput:
    """Result of a strong augmentation.

    Attributes:
        images: augmented images, same dtype/range as the input. Shape: (B, C, H, W).
        labels: class index n of each image. Shape: (B,).
        masks: union mask of the altered pixels (MedMix lesions, cutout holes, pasted patches), or
            all zeros where the family changes the whole image geometry. Shape: (B, 1, H, W).
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


class StrongFamily(Protocol):
    """A strong augmentation family with ``num_classes`` classes."""

    name: str
    num_classes: int

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
            generator: the only source of randomness, on ``x.device``.
            sources: other normal images to cut lesion patches from (MedMix, CutPaste); when None,
                the batch itself rolled by one is used. Shape: (B, C, H, W).
        """
        ...


class WeakView(Protocol):
    """The weak distribution A_0: a random view of each image, drawn independently per image."""

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Shape: (B, C, H, W) -> (B, C, H', W') where H', W' is the configured output size."""
        ...
