"""Self-supervised pre-training losses, one file per family; pure functions of features and labels.

* ``msacl.py``: MSACL (Eq. 2-7): class centres, multi-centring loss, centred contrastive loss with
  temperature calibration;
* ``ccd.py``: CCD's contrastive distribution loss (Eq. 2);
* ``simclr.py``: SimCLR's NT-Xent;
* ``classification.py``: strong-augmentation classification (MSACL Eq. 8, CCD Eq. 3, RotNet) and relative
  patch position (MSACL Eq. 9, CCD Eq. 4);
* ``total.py``: Eq. 1, the weighted sum of the terms;
* ``infonce.py``: the (B, K, V, D) layout and InfoNCE the contrastive losses share.
"""

from msacl.pretrain.losses.ccd import ccd_contrastive_loss
from msacl.pretrain.losses.classification import augmentation_loss, patch_position_loss
from msacl.pretrain.losses.msacl import (
    centred_normalised,
    centres_from_sums,
    class_centres,
    class_sums,
    msacl_contrastive_loss,
    multi_centring_loss,
)
from msacl.pretrain.losses.simclr import nt_xent_loss
from msacl.pretrain.losses.total import weighted_total

__all__ = [
    "augmentation_loss",
    "ccd_contrastive_loss",
    "centred_normalised",
    "centres_from_sums",
    "class_centres",
    "class_sums",
    "msacl_contrastive_loss",
    "multi_centring_loss",
    "nt_xent_loss",
    "patch_position_loss",
    "weighted_total",
]
