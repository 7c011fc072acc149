"""One call that turns a detector's test record (scores, maps) into every metric the papers report."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from msacl.metrics._checks import (
    MetricError,
    check_labels,
    check_maps,
    check_masks,
    check_scores,
    check_threshold,
)
from msacl.metrics.aupro import aupro
from msacl.metrics.auroc import _auroc_from_groups, bootstrap_ci
from msacl.metrics.segmentation import best_dice_threshold, localisation_groups, segmentation_scores, select_threshold
from msacl.runs import as_generator, child_generator, child_seed, make_generator


def evaluate(
    scores: Any,
    labels: Any,
    maps: Any = None,
    masks: Any = None,
    *,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    val_maps: Any = None,
    val_masks: Any = None,
    quantile: float = 0.99,
    min_area: int = 0,
    n_bootstrap: int = 1000,
    ci_level: float = 0.95,
    n_groups: int = 5,
    group_size: int = 100,
    fpr_limit: float = 0.3,
    num_thresholds: int = 256,
) -> dict[str, Any]:
    """Image and pixel metrics of one test set, as a flat JSON-ready dict.

    Segmentation numbers (IoU, Dice, groups) are computed over the abnormal images (label 1), as in MSACL
    Table 2; pixel AUROC and AUPRO over all images (normal images contribute background pixels).

    The binarisation threshold is, in order: ``threshold`` if given; else chosen on ``val_maps`` /
    ``val_masks`` with :func:`select_threshold`; else none, and only the oracle IoU/Dice are reported. The
    oracle threshold (best mean Dice on the test abnormal images) is always reported apart
    (``oracle_threshold``, ``iou_oracle``, ``dice_oracle``).

    Args:
        scores: image anomaly scores. Shape: (N,).
        labels: 0 = normal, 1 = abnormal. Shape: (N,).
        maps: anomaly maps or None. Shape: (N, 1, H, W) or (N, H, W).
        masks: binary ground truth or None (normal images all zero). Same shape as ``maps``.
        threshold: binarisation threshold chosen beforehand on validation data.
        generator: seeds the bootstrap and the random groups; ``None`` uses a generator seeded with 0.
        val_maps: validation maps to choose the threshold on when ``threshold`` is None.
        val_masks: their masks (best-Dice rule) or None (quantile of normal pixel scores).
        quantile: quantile of the quantile rule.
        min_area: connected-component filter for IoU/Dice (0 = off).
        n_bootstrap: bootstrap resamples of the AUROC interval (0 = no interval).
        ci_level: coverage of the interval.
        n_groups: groups of the localisation protocol.
        group_size: images per group.
        fpr_limit: AUPRO integration limit.
        num_thresholds: candidate grid of the oracle / best-Dice search.

    Returns:
        dict with ``n_images``, ``n_normal``, ``n_abnormal``, ``image_auroc``, ``image_auroc_ci_low``,
        ``image_auroc_ci_high``, ``ci_level`` and ``notes`` (list of str); with masks also ``pixel_auroc``,
        ``aupro``, ``threshold``, ``threshold_rule``, ``iou``, ``dice``, ``oracle_threshold``, ``iou_oracle``,
        ``dice_oracle``, ``min_area`` and the group protocol: ``groups_iou``, ``groups_iou_std``,
        ``groups_dice``, ``groups_dice_std`` (at ``threshold``), ``groups_iou_oracle``,
        ``groups_dice_oracle`` (at the oracle threshold; same groups), ``groups_n``, ``groups_size``.
        Values that cannot be computed are None, with the reason in ``notes``.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    g = as_generator(generator)
    g_boot, g_groups = child_generator(g), child_generator(g)
    n_abn = int(y.sum())
    out: dict[str, Any] = {
        "n_images": int(s.size),
        "n_normal": int(s.size - n_abn),
        "n_abnormal": n_abn,
        "image_auroc": None,
        "image_auroc_ci_low": None,
        "image_auroc_ci_high": None,
        "ci_level": ci_level if n_bootstrap > 0 else None,
    }
    notes: list[str] = []
    if 0 < n_abn < s.size:
        out["image_auroc"] = _auroc_from_groups(s[y], s[~y])
        if n_bootstrap > 0:
            lo, hi = bootstrap_ci(s, y.astype(int), n_resamples=n_bootstrap, level=ci_level, generator=g_boot)
            out["image_auroc_ci_low"], out["image_auroc_ci_high"] = lo, hi
    else:
        only = "abnormal" if n_abn else "normal"
        notes.append(f"image AUROC undefined: all {s.size} test images are {only}")

    if masks is not None and maps is None:
        raise MetricError("masks were given without anomaly maps")
    if maps is None:
        out["notes"] = notes
        return out
    m = check_maps(maps)
    if m.shape[0] != s.size:
        raise MetricError(f"{m.shape[0]} anomaly maps for {s.size} scores")
    if masks is None:
        notes.append("no ground-truth masks: pixel metrics skipped")
        out["notes"] = notes
        return out
    gt = check_masks(masks, m.shape)
    _pixel_metrics(out, notes, m, gt, y, fpr_limit)
    _segmentation_metrics(
        out, notes, m[y], gt[y],
        threshold=threshold, val_maps=val_maps, val_masks=val_masks, quantile=quantile, min_area=min_area,
        n_groups=n_groups, group_size=group_size, generator=g_groups, num_thresholds=num_thresholds,
    )
    out["notes"] = notes
    return out


def _pixel_metrics(
    out: dict[str, Any], notes: list[str], m: np.ndarray, gt: np.ndarray, y: np.ndarray, fpr_limit: float
) -> None:
    has_lesion = gt.any(axis=(1, 2))
    if (has_lesion & ~y).any():
        notes.append(f"{int((has_lesion & ~y).sum())} normal images have non-empty masks")
    if (~has_lesion & y).any():
        notes.append(f"{int((~has_lesion & y).sum())} abnormal images have empty masks")
    n_pos = int(gt.sum())
    out["pixel_auroc"] = out["aupro"] = None
    if 0 < n_pos < gt.size:
        out["pixel_auroc"] = _auroc_from_groups(m[gt], m[~gt])
        out["aupro"] = aupro(m, gt, fpr_limit=fpr_limit)
    else:
        notes.append("pixel AUROC and AUPRO undefined: the masks have no lesion pixel" if n_pos == 0
                     else "pixel AUROC and AUPRO undefined: the masks cover every pixel")


def _segmentation_metrics(
    out: dict[str, Any],
    notes: list[str],
    m_abn: np.ndarray,
    gt_abn: np.ndarray,
    *,
    threshold: float | None,
    val_maps: Any,
    val_masks: Any,
    quantile: float,
    min_area: int,
    n_groups: int,
    group_size: int,
    generator: torch.Generator,
    num_thresholds: int,
) -> None:
    keys = ("threshold", "threshold_rule", "iou", "dice", "oracle_threshold", "iou_oracle", "dice_oracle",
            "groups_iou", "groups_iou_std", "groups_dice", "groups_dice_std", "groups_iou_oracle",
            "groups_dice_oracle", "groups_n", "groups_size")
    out.update(dict.fromkeys(keys))
    out["min_area"] = min_area
    if m_abn.shape[0] == 0:
        notes.append("IoU/Dice undefined: no abnormal test images")
        return
    if threshold is not None:
        out["threshold"], out["threshold_rule"] = check_threshold(threshold), "given"
    elif val_maps is not None:
        out["threshold"], out["threshold_rule"] = select_threshold(
            val_maps, val_masks, quantile=quantile, min_area=min_area, num_thresholds=num_thresholds
        )
    else:
        notes.append("no threshold chosen on validation data (threshold= or val_maps=): "
                     "IoU/Dice reported at the oracle threshold only")
    seed = child_seed(generator)

    def groups(t: float) -> dict[str, Any]:
        gen = make_generator(seed, generator.device)  # same groups at both thresholds
        return localisation_groups(m_abn, gt_abn, t, n_groups=n_groups, group_size=group_size,
                                   generator=gen, min_area=min_area)

    t_or, _ = best_dice_threshold(m_abn, gt_abn, min_area=min_area, num_thresholds=num_thresholds)
    iou_or, dice_or = segmentation_scores(m_abn, gt_abn, t_or, min_area=min_area)
    grp_or = groups(t_or)
    out.update(oracle_threshold=t_or, iou_oracle=float(iou_or.mean()), dice_oracle=float(dice_or.mean()),
               groups_iou_oracle=grp_or["iou"], groups_dice_oracle=grp_or["dice"],
               groups_n=grp_or["n_groups"], groups_size=grp_or["group_size"])
    if grp_or["note"]:
        notes.append(grp_or["note"])
    if out["threshold"] is not None:
        iou_t, dice_t = segmentation_scores(m_abn, gt_abn, out["threshold"], min_area=min_area)
        grp = groups(out["threshold"])
        out.update(iou=float(iou_t.mean()), dice=float(dice_t.mean()),
                   groups_iou=grp["iou"], groups_iou_std=grp["iou_std"],
                   groups_dice=grp["dice"], groups_dice_std=grp["dice_std"])
