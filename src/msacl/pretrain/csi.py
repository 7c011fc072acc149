"""CSI: contrasting shifted instances (Tack et al., NeurIPS 2020) as a pre-training method (``--method csi``).

Each training image x is shifted by every transformation S_k of a shifting family (rotations by k x 90
degrees, the paper's choice; class k = 0 is the identity) and each shifted image gets two weak (SimCLR) views.
CSI's loss (Tack et al. Eq. 6) is ``L_con-SI + lambda * L_cls-SI`` with lambda = 1:

* L_con-SI (Eq. 4): NT-Xent in which S_k(x) is an instance of its own: the positive of a view is the other view
  of the same shifted image, and every other view of the batch is a negative, *including the other shifts of
  the same image* (what makes shifted instances "distribution-shifted" negatives);
* L_cls-SI (Eq. 5): cross-entropy of a linear classifier that predicts the shift k of every view.

Details the paper leaves open, from the official code (github.com/alinlab/CSI): ``training/unsup/simclr_CSI.py``
shifts before the SimCLR augmentation (here: rotation, then the weak views), classifies the shift from the
penultimate (pooled) features and uses temperature 0.5 in ``training/contrastive_loss.py``'s ``NT_xent``
(``loss.csi_tau``); ``models/base_model.py``'s projection is Linear-ReLU-Linear to 128 (msacl's
``ProjectionHead``). Not followed: the release's LARS optimiser (lr 0.1, batch 32 x 4 shifts x 2 views); msacl
uses the engine's SGD with momentum and cosine schedule for every method. CSI's own score (cosine similarity
to the nearest training sample times the feature norm, ensembled over shifts) is not part of pre-training: the
``encoder.pt`` feeds msacl's detectors, as in MSACL Fig. 6 right (PaDiM).
"""

from __future__ import annotations

import torch

from msacl.pretrain import losses as L
from msacl.pretrain.methods import Method, register_method


def shifted_instance_loss(z: torch.Tensor, *, tau: float = 0.5) -> torch.Tensor:
    """L_con-SI (CSI Eq. 4): NT-Xent over all B x K shifted instances and their two views.

    Shape:
        z: (B, K, 2, D) projections of view l of shift k of image i (unnormalised).
        returns: scalar, the mean over the 2BK anchors.
    """
    return L.ccd_contrastive_loss(z, tau=tau, negatives="all", normalize=True)


@register_method
class CSI(Method):
    """CSI Eq. 6: ``con`` = L_con-SI, ``aug`` = L_cls-SI (shift classification), both weight 1."""

    name = "csi"

    def terms(self, out, batch, centres):
        return {
            "con": shifted_instance_loss(self._zb(out, batch), tau=self.cfg.loss.csi_tau),
            "aug": L.augmentation_loss(out["logits"], batch.labels),
        }
