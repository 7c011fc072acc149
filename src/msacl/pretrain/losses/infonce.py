"""What the contrastive losses share: the (B, K, V, D) layout checks and InfoNCE over a similarity matrix.

Contrastive losses take the features of a batch laid out as ``(B, K, V, D)``: B images, K strong-augmentation
classes (class n = 0 is the identity), V = 2 weak views and D = 128 dimensions. Under DDP the engine gathers
that tensor across ranks along B before calling them, so every function sees the global batch.
"""

from __future__ import annotations

import torch

# Keeps F.normalize finite when a feature equals its class centre (Eq. 6 has 0/0 there).
EPS = 1e-12


def check_bkvd(z: torch.Tensor, name: str = "z") -> None:
    if z.ndim != 4:
        raise ValueError(f"{name} must be (B, K, V, D), got shape {tuple(z.shape)}")


def two_views(z: torch.Tensor, who: str) -> tuple[int, int, int, int]:
    """(B, K, V, D) of z, which must hold two weak views per sample."""
    check_bkvd(z)
    b, k, v, d = z.shape
    if v != 2:
        raise ValueError(f"{who} needs two weak views per sample, got V = {v}")
    return b, k, v, d


def info_nce(logits: torch.Tensor, positive_logit: torch.Tensor) -> torch.Tensor:
    """Mean of ``-positive_logit + logsumexp_{t != s} logits[s, t]`` over anchors s.

    The diagonal (an anchor paired with itself) is excluded from the denominator, as the indicator
    I(x_j^(m,k) != x^(n,l)) of MSACL Eq. 5 and the 1[k != i] of NT-Xent require.
    """
    s = logits.shape[0]
    eye = torch.eye(s, dtype=torch.bool, device=logits.device)
    denom = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1)
    return (denom - positive_logit).mean()


def partner_index(b: int, k: int, v: int, device: torch.device) -> torch.Tensor:
    """Flat index of x^(n, (l+1) mod 2) of the same image for every flat sample (i, n, l); v is 2."""
    return torch.arange(b * k * v, device=device).view(b, k, v).roll(1, dims=2).reshape(-1)
