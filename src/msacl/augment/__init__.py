"""Augmentations: the weak views A_0 and the strong families A_1..A_K (MSACL Sec. 3.2, CCD Sec. 2.1).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(8, 3, 64, 64)
>>> medmix = build_strong("medmix")
>>> out = medmix(x, medmix.random_labels(8, generator=g), generator=g)
>>> view = WeakAugment(32)(out.images, generator=g)
>>> view.shape, out.labels.shape, out.masks.shape
(torch.Size([8, 3, 32, 32]), torch.Size([8]), torch.Size([8, 1, 64, 64]))
"""

from msacl.augment.base import StrongBase, StrongOutput
from msacl.augment.cutout import Cutout
from msacl.augment.cutpaste import CutPaste
from msacl.augment.geometric import Jigsaw, Permutation, Rotation
from msacl.augment.medmix import MedMix
from msacl.augment.noise import Noise
from msacl.augment.registry import STRONG_FAMILIES, build_strong
from msacl.augment.weak import WeakAugment, WeakConfig

__all__ = [
    "STRONG_FAMILIES",
    "Cutout",
    "CutPaste",
    "Jigsaw",
    "MedMix",
    "Noise",
    "Permutation",
    "Rotation",
    "StrongBase",
    "StrongOutput",
    "WeakAugment",
    "WeakConfig",
    "build_strong",
]
