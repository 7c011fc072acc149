"""The MSACL loss (Eq. 2-7): class centres, the distribution multi-centring loss l_ctr and the centred
contrastive loss with temperature calibration.

MSACL's total (Eq. 1) adds the strong-augmentation and patch-position classification losses of
``classification.py`` (Eq. 8, 9) with their weights (``total.py``).

>>> z = torch.randn(4, 4, 2, 128)
>>> centres = class_centres(z.flatten(0, 2), torch.arange(4).repeat_interleave(2).repeat(4), 4)
>>> msacl_contrastive_loss(z, centres).shape
torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msacl.pretrain.losses.infonce import EPS, check_bkvd, info_nce, partner_index, two_views


def class_centres(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean representation c_n of every strong-augmentation class (MSACL Eq. 2).

    The engine computes this once over the training set before training (strong class n, then one
    weak view) and freezes it, accumulating :func:`class_sums` over batches (and ranks) first.

    Args:
        z: representations f_theta(a(x)). Shape: (N, D).
        labels: class n of each row. Shape: (N,).
        num_classes: K, the number of classes (including n = 0).

    Returns:
        c. Shape: (K, D). A class without samples raises ValueError.
    """
    return centres_from_sums(*class_sums(z, labels, num_classes))


def class_sums(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of z and sample counts, the additive parts of Eq. 2. Shape: (K, D), (K,) in z's dtype."""
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    return sums, torch.bincount(labels, minlength=num_classes).to(z.dtype)


def centres_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Eq. 2 from accumulated :func:`class_sums`; a class with no samples raises ValueError."""
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"no samples of class(es) {missing} to compute their centre")
    return sums / counts.unsqueeze(1)


def multi_centring_loss(
    z: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, *, squared: bool = False
) -> torch.Tensor:
    """Distribution multi-centring loss l_ctr (MSACL Eq. 3).

    ``E_{x, n, a ~ A_n} || f_theta(a(x)) - c_n ||``. The paper writes ||.||_2 without a square, the same
    Euclidean norm it uses in Eq. 6, so the default is the plain norm; ``squared=True`` gives the squared
    distance (Deep-SVDD style), whose gradient does not have unit length far from the centre.

    Args:
        z: representations of strongly + weakly augmented samples. Shape: (N, D).
        labels: strong class n of each sample. Shape: (N,).
        centres: frozen class centres c_n. Shape: (K, D).
        squared: use ||.||_2^2 instead of ||.||_2.

    Returns:
        Scalar mean over the N samples.
    """
    diff = z - centres[labels]
    d2 = diff.pow(2).sum(dim=1)
    if squared:
        return d2.mean()
    # sqrt'(0) is infinite; clamping gives a zero gradient for a sample sitting exactly on its centre.
    return d2.clamp_min(EPS**2).sqrt().mean()


def centred_normalised(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """f~_theta: features centred by their class centre and projected to the unit sphere (MSACL Eq. 6).

    Shape:
        z: (B, K, V, D); centres: (K, D); output: (B, K, V, D).
    """
    check_bkvd(z)
    return F.normalize(z - centres.view(1, -1, 1, z.shape[-1]), dim=-1, eps=EPS)


def msacl_contrastive_loss(
    z: torch.Tensor, centres: torch.Tensor, *, tau: float = 0.2, alpha: float = 2.0
) -> torch.Tensor:
    """MSACL contrastive loss with temperature calibration (MSACL Eq. 4-7).

    For every sample x^(n,l) (image i, strong class n, weak view l) the positive is x^(n, 1-l) of the
    same image and class, scaled by 1/tau. The denominator sums over every other sample of every image,
    class and view (only the anchor itself is left out, so the positive appears there too), each pair
    scaled by kappa(n, m) = 1/(alpha tau) when n == m and 1/tau otherwise (Eq. 7). Features are centred
    by their class centre and normalised first (Eq. 6).

    The paper gives no value of alpha; it says same-class pairs get a "smaller amount of repelling
    strength", i.e. kappa(n, n) < 1/tau, alpha > 1. ``alpha = 2.0`` is our choice; ``alpha = 1`` turns
    the calibration off (the ablation). With alpha > 1 the loss can be negative, as the numerator uses
    1/tau while the positive's own denominator term uses 1/(alpha tau).

    Args:
        z: representations f_theta(x^(n,l)). Shape: (B, K, 2, D).
        centres: frozen class centres c_n (Eq. 2). Shape: (K, D).
        tau: temperature tau.
        alpha: temperature calibration factor of same-class pairs.

    Returns:
        Scalar mean over the B * K * 2 anchors.
    """
    b, k, v, d = two_views(z, "MSACL")
    zt = centred_normalised(z, centres).reshape(-1, d)
    sim = zt @ zt.T
    cls = torch.arange(k, device=z.device).view(1, k, 1).expand(b, k, v).reshape(-1)
    same = cls.unsqueeze(0) == cls.unsqueeze(1)
    kappa = torch.where(same, 1.0 / (alpha * tau), 1.0 / tau)
    pos = partner_index(b, k, v, z.device)
    pos_logit = sim.gather(1, pos.unsqueeze(1)).squeeze(1) / tau
    return info_nce(kappa * sim, pos_logit)
