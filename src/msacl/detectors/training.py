"""The shared engine of the trained detectors: collecting and checking the training images and seeded weight
initialisation (IGD, F-anoGAN, MS-SSIM AE, DAE, OCGAN, CAVGA), the epoch loop with a tqdm bar (IGD, F-anoGAN,
MS-SSIM AE, DAE) and random numbers drawn from a generator.

Losses and scores are pure functions in each detector's module; a detector only defines its per-batch
step, and ``run_epochs`` owns the pass over the data (shuffling, progress, learning-rate decay).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from msacl.detectors.common import check_images
from msacl.errors import DataError
from msacl.runs import child_seed, seeded

StepFn = Callable[[torch.Tensor, torch.Generator], dict[str, float]]


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


def run_epochs(data: torch.Tensor, step: StepFn, *, epochs: int, batch_size: int, generator: torch.Generator,
               optimizers: Sequence[torch.optim.Optimizer] = (), lr_power: float | None = None,
               device: torch.device | None = None, progress: bool = False, desc: str = "fit",
               on_epoch_start: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Shuffle ``data`` each epoch with ``generator`` and call ``step(batch, generator)`` per mini-batch.

    A final batch of one image is dropped (BatchNorm cannot train on it). With ``lr_power`` the learning
    rate of every optimiser decays polynomially per step, ``lr0 * (1 - t / T) ** lr_power`` (IGD release).

    Returns:
        per epoch, the mean of each loss over the steps that reported it.
    """
    n = data.shape[0]
    per_epoch = n // batch_size + (1 if n % batch_size > 1 else 0)
    total = max(1, epochs * per_epoch)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, leave=False)
    t = 0
    try:
        for epoch in range(epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            order = torch.randperm(n, generator=generator, device=generator.device).cpu()
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for i in range(per_epoch):
                idx = order[i * batch_size:(i + 1) * batch_size]
                if lr_power is not None:
                    for opt in optimizers:
                        for group in opt.param_groups:
                            group["lr"] = group["initial_lr"] * (1 - t / total) ** lr_power
                x = data[idx]
                if device is not None:
                    x = x.to(device)
                losses = step(x, generator)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
                t += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            history.append({k: v / counts[k] for k, v in sums.items()})
    finally:
        bar.close()
    return history


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
