"""The in-memory record every stage after ``data`` reads: decoded, resized image tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images of one split, decoded and resized once.

    Attributes:
        images: float32 in [0, 1]. Shape: (N, C, H, W).
        labels: 0 = normal, 1 = abnormal. Shape: (N,).
        masks: binary float32 lesion masks, or None when the split has none. Shape: (N, 1, H, W).
            Normal images have all-zero masks.
        paths: source file of each image (the row order of ``images``).
        skipped: files left out under ``on_bad_file="skip"``, each ``(path, reason)``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    masks: torch.Tensor | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(self.labels.shape)}")
        if len(self.paths) != n:
            raise ValueError(f"{len(self.paths)} paths for {n} images")
        if self.masks is not None and self.masks.shape != (n, 1, *self.images.shape[2:]):
            raise ValueError(f"masks must be ({n}, 1, H, W), got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def subset(self, index: torch.Tensor | list[int]) -> ImageSet:
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            paths=[self.paths[i] for i in idx.tolist()],
            masks=None if self.masks is None else self.masks[idx],
            skipped=list(self.skipped),
        )
