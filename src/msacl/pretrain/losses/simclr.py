"""SimCLR's NT-Xent loss (Chen et al. 2020, Eq. 1)."""

from __future__ import annotations

import torch

from msacl.pretrain.losses.ccd import ccd_contrastive_loss


def nt_xent_loss(z: torch.Tensor, *, tau: float = 0.5) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al. 2020, Eq. 1) over two weak views of each image.

    Each view's positive is the other view of its image; the other 2B - 2 views are negatives.
    tau defaults to SimCLR's 0.5; the engine passes its own (0.2, CCD Sec. 3.2) so baselines match.

    Args:
        z: representations of the two views. Shape: (B, 2, D).
        tau: temperature.

    Returns:
        Scalar mean over the 2B anchors.
    """
    if z.ndim != 3 or z.shape[1] != 2:
        raise ValueError(f"z must be (B, 2, D), got shape {tuple(z.shape)}")
    return ccd_contrastive_loss(z.unsqueeze(1), tau=tau, negatives="all", normalize=True)
