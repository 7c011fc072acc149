"""Classification pretexts: which strong augmentation made a sample (MSACL Eq. 8, CCD Eq. 3, RotNet with
rotations) and where a neighbouring patch lies (MSACL Eq. 9, CCD Eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
