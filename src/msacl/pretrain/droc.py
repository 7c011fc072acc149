"""DROC: deep representations for one-class classification (Sohn et al., ICLR 2021), stage 1, as a pre-training
method (``--method droc``).

DROC learns a representation with contrastive learning under *distribution augmentation* (DA): the training
set is enlarged with rotated copies of every image (0, 90, 180, 270 degrees), and each copy is an instance of
its own, so rotated normal images act as negatives of upright ones and the learned inliers are more compact.
Stage 2 fits a one-class classifier (OC-SVM or KDE) on the representations; in msacl that role is taken by the
detectors that read ``encoder.pt`` (MSACL Fig. 6 right uses PaDiM).

The loss (Sohn et al., Sec. 3, the contrastive loss with temperature tau; official code
``contrastive.py``, ``Contrastive.train_step``) is one-directional: with L2-normalised projections u_i, v_i of
two views of instance i, ``-1/B sum_i log exp(<u_i, v_i> / tau) / sum_j exp(<u_i, v_j> / tau)``; only the first
views are anchors and only the second views are candidates.

Details from the official code (github.com/google-research/deep_representation_one_class): DA is applied offline
to the training set (``data/cifar.py``, ``distaug_type == 'rot'``: four deterministic rotations, then shuffled
batches), so each batch slot here draws a random rotation of its image, which samples the same enlarged set;
``script/run_contrastive_da.sh``: tau = 0.2, batch 32, SGD lr 0.01, momentum 0.9, cosine schedule (the engine's
defaults), weight decay 3e-4 (``--set optim.weight_decay=3e-4``; the engine's default is 1e-4), and a projection
MLP of eight ``model.proj_hidden`` (512) wide hidden layers before the ``model.proj_dim`` (128) output
(``HEAD_LAYERS``; Linear + ReLU here, as msacl's ``ProjectionHead``: ``model/resnet_util.py``, which builds it,
was not available to us).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msacl.pretrain.methods import Batch, Method, PretrainNet, register_method

HEAD_LAYERS = 8
"""Hidden layers of DROC's projection head (``head_dims`` of the release's run_contrastive_da.sh)."""


def one_sided_contrastive_loss(z: torch.Tensor, *, tau: float = 0.2) -> torch.Tensor:
    """DROC's contrastive loss: cross-entropy of ``<u_i, v_j> / tau`` over j with target j = i.

    Shape:
        z: (B, 2, D) projections of the two views of each instance (unnormalised).
        returns: scalar, the mean over the B anchors u_i.
    """
    if z.ndim != 3 or z.shape[1] != 2:
        raise ValueError(f"z must be (B, 2, D), got shape {tuple(z.shape)}")
    u, v = F.normalize(z[:, 0], dim=-1), F.normalize(z[:, 1], dim=-1)
    return F.cross_entropy(u @ v.T / tau, torch.arange(z.shape[0], device=z.device))


class DeepHead(nn.Module):
    """DROC's projection MLP: ``layers`` hidden Linear(hidden) + ReLU, then Linear(out_dim).

    Shape: (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 128, layers: int = 8):
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        self.net = nn.Sequential(*mods, nn.Linear(d, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


@register_method
class DROC(Method):
    """DROC stage 1: one rotated copy of each image (a random k x 90 degrees), two weak views, ``con`` only."""

    name = "droc"

    def build_network(self) -> PretrainNet:
        net = super().build_network()
        m = self.cfg.model
        # No loss reads a class: a head without gradients would stall DDP, which expects every parameter to get one.
        net.classifier = None
        net.projection = DeepHead(net.feature_dim, m.proj_hidden, m.proj_dim, layers=HEAD_LAYERS)
        return net

    def make_batch(self, x: torch.Tensor, *, generator: torch.Generator) -> Batch:
        x = self._inputs(x, generator)
        k = torch.randint(self.num_classes, (x.shape[0],), generator=generator, device=generator.device).to(x.device)
        if self.strong is not None:  # a DA copy: the image under its drawn class of the family (rotation k)
            x = self.strong(x, k, generator=generator, sources=x.roll(1, dims=0)).images
        views = torch.stack([self.weak(x, generator=generator) for _ in range(2)], dim=1)
        return Batch(views=views.flatten(0, 1), labels=k.repeat_interleave(2), num_classes=1, num_views=2)

    def terms(self, out, batch, centres):
        z = out["z"].view(-1, 2, out["z"].shape[-1])
        return {"con": one_sided_contrastive_loss(z, tau=self.cfg.loss.tau)}
