"""Noise as a strong family: 0 none, 1 Gaussian, 2 speckle, 3 salt and pepper (MSACL Fig. 6 left "Gau")."""

from __future__ import annotations

import torch

from msacl.augment import functional as AF
from msacl.augment.base import StrongBase, StrongOutput


class Noise(StrongBase):
    """Four noise classes; the strength is drawn per image from the given ranges.

    * Gaussian: ``x + sigma * e``; speckle: ``x + sigma * x * e`` with e ~ N(0, 1) per pixel and channel.
    * Salt and pepper: a fraction ``amount`` of pixels set to 0 or 1 (all channels, even odds).

    The result is clipped to [0, 1]. ``masks`` is all ones for the Gaussian and speckle classes (every
    pixel is altered) and marks the flipped pixels for salt and pepper.

    Args:
        gaussian_std: range of sigma for class 1.
        speckle_std: range of sigma for class 2.
        salt_pepper: range of the fraction of pixels flipped in class 3.
    """

    name = "noise"
    num_classes = 4
    class_names = ("none", "Gaussian", "speckle", "salt & pepper")

    def __init__(self, gaussian_std: tuple[float, float] = (0.05, 0.15), speckle_std: tuple[float, float] = (0.1, 0.3),
                 salt_pepper: tuple[float, float] = (0.02, 0.08)):
        for name, r in (("gaussian_std", gaussian_std), ("speckle_std", speckle_std), ("salt_pepper", salt_pepper)):
            if not 0 <= r[0] <= r[1]:
                raise ValueError(f"{name} must satisfy 0 <= low <= high, got {r}")
        if salt_pepper[1] > 1:
            raise ValueError(f"salt_pepper is a fraction of pixels, got {salt_pepper}")
        self.gaussian_std, self.speckle_std, self.salt_pepper = tuple(gaussian_std), tuple(speckle_std), \
            tuple(salt_pepper)

    def _apply(self, x, labels, *, generator, sources):
        b, c, h, w = x.shape
        dev = x.device
        g_std = AF.uniform(b, *self.gaussian_std, generator=generator, device=dev).view(-1, 1, 1, 1)
        s_std = AF.uniform(b, *self.speckle_std, generator=generator, device=dev).view(-1, 1, 1, 1)
        amount = AF.uniform(b, *self.salt_pepper, generator=generator, device=dev).view(-1, 1, 1, 1)
        e = AF.normal(x.shape, generator=generator, device=dev).to(x.dtype)
        u = AF.uniform((b, 1, h, w), 0, 1, generator=generator, device=dev)
        lab = labels.view(-1, 1, 1, 1)
        out = torch.where(lab == 1, x + g_std * e, x)
        out = torch.where(lab == 2, x + s_std * x * e, out)
        flip = (lab == 3) & (u < amount)
        salt = u < amount / 2
        out = torch.where(flip, salt.to(x.dtype).expand_as(x), out).clamp_(0, 1)
        mask = ((lab == 1) | (lab == 2)).expand(b, 1, h, w) | flip
        return StrongOutput(out, labels, mask.to(x.dtype))
