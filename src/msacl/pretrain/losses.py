"""Self-supervised pre-training losses of MSACL (Eq. 1-9), CCD (Eq. 1-4), SimCLR and RotNet.

Pure functions of features and labels. Contrastive losses take the features of a batch laid out as
``(B, K, V, D)``: B images, K strong-augmentation classes (class n = 0 is the identity), V = 2 weak views
and D = 128 dimensions. Under DDP the engine gathers that tensor across ranks along B before calling them,
so every function sees the global batch.

>>> z = torch.randn(4, 4, 2, 128)
>>> centres = class_centres(z.flatten(0, 2), torch.arange(4).repeat_interleave(2).repeat(4), 4)
>>> msacl_contrastive_loss(z, centres).shape
torch.Size([])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

# Keeps F.normalize finite when a feature equals its class centre (Eq. 6 has 0/0 there).
_EPS = 1e-12


def _check_bkvd(z: torch.Tensor, name: str = "z") -> None:
    if z.ndim != 4:
        raise ValueError(f"{name} must be (B, K, V, D), got shape {tuple(z.shape)}")


def _two_views(z: torch.Tensor, who: str) -> tuple[int, int, int, int]:
    """(B, K, V, D) of z, which must hold two weak views per sample."""
    _check_bkvd(z)
    b, k, v, d = z.shape
    if v != 2:
        raise ValueError(f"{who} needs two weak views per sample, got V = {v}")
    return b, k, v, d


def _info_nce(logits: torch.Tensor, positive_logit: torch.Tensor) -> torch.Tensor:
    """Mean of ``-positive_logit + logsumexp_{t != s} logits[s, t]`` over anchors s.

    The diagonal (an anchor paired with itself) is excluded from the denominator, as the indicator
    I(x_j^(m,k) != x^(n,l)) of MSACL Eq. 5 and the 1[k != i] of NT-Xent require.
    """
    s = logits.shape[0]
    eye = torch.eye(s, dtype=torch.bool, device=logits.device)
    denom = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1)
    return (denom - positive_logit).mean()


def _partner_index(b: int, k: int, v: int, device: torch.device) -> torch.Tensor:
    """Flat index of x^(n, (l+1) mod 2) of the same image for every flat sample (i, n, l); v is 2."""
    return torch.arange(b * k * v, device=device).view(b, k, v).roll(1, dims=2).reshape(-1)


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
    return d2.clamp_min(_EPS**2).sqrt().mean()


def centred_normalised(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """f~_theta: features centred by their class centre and projected to the unit sphere (MSACL Eq. 6).

    Shape:
        z: (B, K, V, D); centres: (K, D); output: (B, K, V, D).
    """
    _check_bkvd(z)
    return F.normalize(z - centres.view(1, -1, 1, z.shape[-1]), dim=-1, eps=_EPS)


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
    b, k, v, d = _two_views(z, "MSACL")
    zt = centred_normalised(z, centres).reshape(-1, d)
    sim = zt @ zt.T
    cls = torch.arange(k, device=z.device).view(1, k, 1).expand(b, k, v).reshape(-1)
    same = cls.unsqueeze(0) == cls.unsqueeze(1)
    kappa = torch.where(same, 1.0 / (alpha * tau), 1.0 / tau)
    pos = _partner_index(b, k, v, z.device)
    pos_logit = sim.gather(1, pos.unsqueeze(1)).squeeze(1) / tau
    return _info_nce(kappa * sim, pos_logit)


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
    b, k, v, d = _two_views(z, "CCD")
    if normalize:
        z = F.normalize(z, dim=-1, eps=_EPS)
    if negatives == "all":
        flat = z.reshape(-1, d)
        sim = flat @ flat.T / tau
        pos = _partner_index(b, k, v, z.device)
        return _info_nce(sim, sim.gather(1, pos.unsqueeze(1)).squeeze(1))
    if negatives != "same":
        raise ValueError(f"negatives must be 'same' or 'all', got {negatives!r}")
    # logits[j, l, i, i'] = <z(i, j, l), z(i', j, 1-l)> / tau; the positive is i' = i.
    anchors = z.permute(1, 2, 0, 3)  # (K, 2, B, D)
    logits = anchors @ anchors.flip(1).transpose(-1, -2) / tau
    target = torch.arange(b, device=z.device).repeat(k * v)
    return F.cross_entropy(logits.reshape(-1, b), target)


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


def augmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Strong-augmentation classification l_aug (MSACL Eq. 8, CCD Eq. 3); RotNet's loss with rotations.

    ``-E log a_n^T f_beta(f_theta(a(x)))``: cross-entropy of the class of the strong augmentation that
    produced each sample. Labels travel with their samples (the released CCD code misaligns them with
    interleaved views; here each row of ``logits`` has its own label).

    Args:
        logits: f_beta outputs before the softmax. Shape: (N, K).
        labels: class n of each sample. Shape: (N,).
    """
    return F.cross_entropy(logits, labels)


def patch_position_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Relative patch position loss l_pos (MSACL Eq. 9, CCD Eq. 4; Doersch et al. 2015).

    ``-E log p^T f_gamma(f_theta(x_w1), f_theta(x_w2))`` with p the one-hot position (0-7) of the
    neighbour x_w2 among the eight cells around the centre patch x_w1.

    Args:
        logits: f_gamma outputs before the softmax. Shape: (N, 8).
        labels: position index of each pair. Shape: (N,).
    """
    return F.cross_entropy(logits, labels)


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Eq. 1 of both papers: the sum of the loss terms, each with its weight (all 1 in the papers).

    Shape:
        every term: (); output: ().
    """
    missing = [k for k in terms if k not in weights]
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}")
    return sum(weights[k] * v for k, v in terms.items())  # type: ignore[return-value]
