"""The t-SNE picture of a pre-trained encoder's test representations (MSACL Fig. 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from msacl.data.types import ImageSet
from msacl.pretrain.methods import PretrainNet
from msacl.runs import make_generator


@torch.no_grad()
def encoder_features(
    net: PretrainNet, images: torch.Tensor, *, batch_size: int = 64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Pooled backbone features (what the detectors build on) in eval mode. Shape: (N, C, H, W) -> (N, D)."""
    was_training = net.training
    net.eval()
    dtype = next(net.parameters()).dtype
    try:
        feats = [net.encoder(x.to(device, dtype=dtype)).float().cpu() for x in images.split(batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(feats)


def tsne_picture(
    net: PretrainNet, test: ImageSet, path: str | Path, *, seed: int, run_seed: int | None = None,
    max_images: int = 2000, batch_size: int = 64, device: torch.device | str = "cpu",
) -> Path | None:
    """Write a t-SNE scatter of normal vs abnormal test images; None (and a note) when too few images.

    ``seed`` drives the subsample and the layout; the title names ``run_seed``, the seed the user gave.
    """
    from msacl.report.plots import plot_tsne

    n = len(test)
    if n < 5 or test.labels.unique().numel() < 2:
        print(f"t-SNE skipped: the test split needs >= 5 images of both classes (has {n})", file=sys.stderr)
        return None
    idx = torch.arange(n)
    if n > max_images:
        idx = torch.randperm(n, generator=make_generator(seed))[:max_images].sort().values
    feats = encoder_features(net, test.images[idx], batch_size=batch_size, device=device)
    return plot_tsne(feats.numpy(), test.labels[idx].numpy(), path, seed=seed % 2**32,
                     title="t-SNE of pre-trained encoder features (test split)",
                     shown_seed=seed if run_seed is None else run_seed)
