"""Heads put on top of an encoder during self-supervised pre-training (MSACL Sec. 3.1, CCD Sec. 2.1).

f_theta in both papers is the backbone followed by an MLP projection head into Z (Z = 128, MSACL Sec. 4.2).
The equations write the pretext heads f_beta (augmentation class, Eq. 8) and f_gamma (relative patch
position, Eq. 9) on f_theta; like the released CCD code they read the backbone's pooled features h here,
not Z: the multi-centring loss contracts Z towards frozen centres, and a classifier behind that
contraction loses its input exactly when the centres barely differ (issue 11). Only the backbone is kept
after pre-training; these heads are discarded.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_POSITIONS = 8  # the eight neighbours of the centre cell of a 3 x 3 grid


class ProjectionHead(nn.Module):
    """The SimCLR-style MLP g: pooled backbone features -> Z.

    Args:
        in_dim: backbone feature size (512 for ResNet-18/34, 2048 for ResNet-50).
        hidden_dim: width of the hidden layer.
        out_dim: size Z of the representation (128 in both papers).

    Shape:
        input: (B, in_dim); output: (B, out_dim).
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        # No BatchNorm here: the head then behaves identically per rank and on the gathered batch.
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class AugClassifier(nn.Module):
    """f_beta: pooled backbone features h -> K logits of the strong augmentation class (MSACL Eq. 8, CCD Eq. 3).

    The papers write f_beta with a softmax output in [0, 1]^K; we return logits and let the
    cross-entropy apply the (log-)softmax, which is the same loss computed stably.

    Args:
        dim: size of h (the encoder's ``out_dim``: 512 for ResNet-18).
        num_classes: K.

    Shape:
        input: (N, dim); output: (N, K).
    """

    def __init__(self, dim: int = 512, num_classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


class PatchPositionHead(nn.Module):
    """f_gamma: h x h -> 8 logits of where the second patch lies around the first (MSACL Eq. 9, CCD Eq. 4).

    As in Doersch et al. (2015) the two pooled backbone features are concatenated and classified by a
    small MLP.

    Args:
        dim: size of h (the encoder's ``out_dim``).
        hidden_dim: width of the hidden layer.

    Shape:
        centre, neighbour: (N, dim); output: (N, 8).
    """

    def __init__(self, dim: int = 512, hidden_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, NUM_POSITIONS)
        )

    def forward(self, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([centre, neighbour], dim=1))
