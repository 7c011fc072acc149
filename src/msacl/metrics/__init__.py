"""Detection and localisation metrics. Reads scores and maps only; knows nothing of models.

Inputs are torch tensors or numpy arrays: image scores ``(N,)``, labels ``(N,)`` (0 normal, 1 abnormal),
anomaly maps ``(N, 1, H, W)`` (higher = more anomalous) and binary masks of the same shape.

Metrics
    * ``image_auroc``, ``roc_curve``, ``pixel_auroc``: exact AUROC (ties count one half), checked against
      scikit-learn; the pixel version runs over every pixel without float64 copies.
    * ``bootstrap_ci``: stratified percentile bootstrap interval of the AUROC (1000 resamples, 95%).
    * ``iou``, ``dice``, ``segmentation_scores``: of the binarised map ``maps >= threshold``, per image and
      averaged over images (mean of per-image values). When prediction and ground truth are both empty the
      image scores 1.0; when exactly one is empty, 0.0.
    * ``remove_small_components``: optional connected-component post-processing (8-connected components
      smaller than ``min_area`` pixels are dropped), as the CCD paper applies before computing IoU.
    * ``aupro``: per-region overlap integrated up to FPR 0.3 and normalised (MVTec AD).
    * ``localisation_groups``: the papers' protocol, mean IoU/Dice over 5 random groups of 100 abnormal
      images (MSACL Table 2, CCD Table 2).
    * ``evaluate``: all of the above as one JSON-ready dict.

Threshold selection rule
    IoU and Dice need a threshold, and choosing it on the test set inflates them. The threshold is chosen on
    validation data (``select_threshold``): the best mean Dice on a validation split with lesion masks, or,
    when there are none, the 0.99 quantile (``quantile=``) of the pixel scores of held-out normal images
    (about 1% of normal pixels are then flagged). IoU/Dice at that threshold are reported as ``iou`` and
    ``dice``. The threshold with the best mean Dice on the test abnormal images themselves (the oracle,
    ``best_dice_threshold``) is an upper bound, reported separately as ``iou_oracle`` and ``dice_oracle``
    (threshold ``oracle_threshold``).
"""

from msacl.metrics._checks import MetricError
from msacl.metrics.aupro import aupro, pro_curve
from msacl.metrics.auroc import bootstrap_ci, image_auroc, pixel_auroc, roc_curve
from msacl.metrics.evaluate import evaluate
from msacl.metrics.segmentation import (
    best_dice_threshold,
    candidate_thresholds,
    dice,
    iou,
    localisation_groups,
    quantile_threshold,
    remove_small_components,
    segmentation_scores,
    select_threshold,
)

__all__ = [
    "MetricError",
    "aupro",
    "best_dice_threshold",
    "bootstrap_ci",
    "candidate_thresholds",
    "dice",
    "evaluate",
    "image_auroc",
    "iou",
    "localisation_groups",
    "pixel_auroc",
    "pro_curve",
    "quantile_threshold",
    "remove_small_components",
    "roc_curve",
    "segmentation_scores",
    "select_threshold",
]
