"""What the trained detectors share besides their loop (``msacl.detectors.fitloop``): collecting and checking the
training images, seeded weight initialisation (IGD, F-anoGAN, MS-SSIM AE, DAE, OCGAN, CAVGA) and random numbers
drawn from a generator.

Losses and scores are pure functions in each detector's module; a detector only defines its per-batch
step, and ``FitLoop.run`` owns the pass over the data (shuffling, progress, learning-rate decay, checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from msacl.detectors.common import check_images
from msacl.errors import DataError
from msacl.runs import child_seed, seeded


def collect_images(batches: Iterable[torch.Tensor], *, image_size: tuple[int, int], channels: int,
                   who: str) -> torch.Tensor:
    """Concatenate the training batches once (several epochs need to see them again) and check them.

    Raises:
        DataError: naming the batch and what is wrong (shape, size, channels, range, too few images).

    Shape: yields (B, C, H, W) float in [0, 1] -> (N, C, H, W).
    """
    parts = []
    for i, b in enumerate(batches):
        if not isinstance(b, torch.Tensor) or b.ndim != 4 or not b.is_floating_point():
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise DataError(f"{who}: training batch {i} must be a float (B, C, H, W) tensor, got {got}")
        check_images(b, f"{who}: training batch {i}", image_size=image_size, channels=channels)
        parts.append(b)
    if not parts or sum(p.shape[0] for p in parts) < 2:
        raise DataError(f"{who}: needs at least 2 training images, got {sum(p.shape[0] for p in parts)}")
    return torch.cat(parts)


def reinit(modules: Iterable[nn.Module], generator: torch.Generator) -> None:
    """Re-initialise every layer with ``reset_parameters`` in ``modules``, seeded from ``generator``."""
    with seeded(child_seed(generator)):
        for module in modules:
            for m in module.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def rand(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn from ``generator`` and placed on ``like``'s device and dtype."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(like)


def randn(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers drawn from ``generator`` on ``like``'s device and dtype."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(like)


def randperm(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(like.device)
