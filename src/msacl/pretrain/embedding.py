"""What the t-SNE picture of a pre-trained encoder shows (MSACL Fig. 1): its features of test images.

The engine computes them here and writes them to the run's embedding.pt; the report side draws the picture
from that file (``plot_run_tsne`` in report/tsne.py, called by ``msacl pretrain``), so that pre-training never
imports the report.
"""

from __future__ import annotations

import sys

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


def tsne_inputs(
    net: PretrainNet, test: ImageSet, *, seed: int, max_images: int = 2000, batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Features (n, D) and labels (n,) of at most ``max_images`` test images (a subsample drawn with ``seed``);
    None (and a note on stderr) when the split has fewer than 5 images or only one class."""
    n = len(test)
    if n < 5 or test.labels.unique().numel() < 2:
        print(f"t-SNE skipped: the test split needs >= 5 images of both classes (has {n})", file=sys.stderr)
        return None
    idx = torch.arange(n)
    if n > max_images:
        idx = torch.randperm(n, generator=make_generator(seed))[:max_images].sort().values
    return encoder_features(net, test.images[idx], batch_size=batch_size, device=device), test.labels[idx]
