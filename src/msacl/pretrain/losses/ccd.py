"""CCD's contrastive distribution loss l_con (CCD Eq. 2).

CCD's total (Eq. 1) adds the classification losses of ``classification.py`` (Eq. 3, 4).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from msacl.pretrain.losses.infonce import EPS, info_nce, partner_index, two_views


def ccd_contrastive_loss(
    z: torch.Tensor,
    *,
    tau: float = 0.2,
    negatives: Literal["same", "all"] = "same",
    normalize: bool = True,
) -> torch.Tensor:
    """Contrastive distribution loss l_con (CCD Eq. 2).

    Each (image, strong augmentation a_j) pair is an instance; its positive is its other weak view.
    ``negatives="same"`` follows the equation: the negatives of x~^j = a_j(x) under view a are the other
    images of the batch under the same strong augmentation a_j and the other view a', x~_i^j, so each
    anchor is classified against B candidates (its positive and B - 1 negatives). ``negatives="all"``
    uses every other sample of the batch (all images, classes and views) as in NT-Xent.

    The equation writes an inner product of f_theta; as in the contrastive methods CCD builds on
    (SimCLR, Sohn et al. 2021), features are L2-normalised first unless ``normalize=False``.

    Args:
        z: representations f_theta(a(a_j(x_i))). Shape: (B, K, 2, D).
        tau: temperature.
        negatives: "same" (Eq. 2) or "all".
        normalize: cosine similarity instead of the raw inner product.

    Returns:
        Scalar mean over the B * K * 2 anchors.
    """
    b, k, v, d = two_views(z, "CCD")
    if normalize:
        z = F.normalize(z, dim=-1, eps=EPS)
    if negatives == "all":
        flat = z.reshape(-1, d)
        sim = flat @ flat.T / tau
        pos = partner_index(b, k, v, z.device)
        return info_nce(sim, sim.gather(1, pos.unsqueeze(1)).squeeze(1))
    if negatives != "same":
        raise ValueError(f"negatives must be 'same' or 'all', got {negatives!r}")
    # logits[j, l, i, i'] = <z(i, j, l), z(i', j, 1-l)> / tau; the positive is i' = i.
    anchors = z.permute(1, 2, 0, 3)  # (K, 2, B, D)
    logits = anchors @ anchors.flip(1).transpose(-1, -2) / tau
    target = torch.arange(b, device=z.device).repeat(k * v)
    return F.cross_entropy(logits.reshape(-1, b), target)
