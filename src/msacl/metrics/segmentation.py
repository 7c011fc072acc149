"""IoU and Dice of binarised anomaly maps, threshold selection, the papers' group protocol, CC filtering.

Conventions (see also the package docstring):

* A pixel is predicted abnormal when its map value is ``>= threshold``.
* IoU = |P & G| / |P | G| and Dice = 2 |P & G| / (|P| + |G|) per image; when both the prediction and the
  ground truth are empty the image scores 1.0 (nothing to find, nothing found); when only one is empty it
  scores 0.0. Aggregates are the mean over images (not the pooled pixel counts), as in MSACL Table 2.
* Optional post-processing drops 8-connected predicted components smaller than ``min_area`` pixels
  (connected-component analysis, as the CCD paper does before computing IoU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from msacl.metrics._checks import MetricError, check_maps, check_masks, check_threshold
from msacl.runs import as_generator

_EIGHT_CONNECTED_STACK = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_STACK[1] = True
# Images binarised at once; bounds the temporaries to a few bytes x 64 images.
_IMAGES_PER_STEP = 64


def remove_small_components(pred: Any, min_area: int) -> np.ndarray:
    """Drop 8-connected foreground components smaller than ``min_area`` pixels, image by image.

    Args:
        pred: binary predictions. Shape: (H, W), (N, H, W) or (N, 1, H, W).
        min_area: smallest component kept, in pixels; 0 or 1 keeps everything.

    Returns:
        bool array of the same shape.
    """
    p = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred).astype(bool)
    if min_area <= 1:
        return p.copy()
    if p.ndim < 2:
        raise MetricError(f"predictions must be (H, W), (N, H, W) or (N, 1, H, W); got shape {p.shape}")
    flat = p.reshape(-1, *p.shape[-2:])
    out = np.empty_like(flat)
    for start in range(0, flat.shape[0], _IMAGES_PER_STEP):
        block = flat[start:start + _IMAGES_PER_STEP]
        # one label call per block; the structure links pixels within an image, never across images
        lab, n = ndimage.label(block, structure=_EIGHT_CONNECTED_STACK)
        keep = np.bincount(lab.ravel(), minlength=n + 1) >= min_area
        keep[0] = False
        out[start:start + _IMAGES_PER_STEP] = keep[lab]
    return out.reshape(p.shape)


def _overlap_counts(
    maps: np.ndarray, masks: np.ndarray, threshold: float, min_area: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image |P & G|, |P| and |G| as int64 arrays of shape (N,)."""
    n = maps.shape[0]
    inter = np.empty(n, np.int64)
    pred_area = np.empty(n, np.int64)
    for start in range(0, n, _IMAGES_PER_STEP):
        sl = slice(start, start + _IMAGES_PER_STEP)
        pred = maps[sl] >= threshold
        if min_area > 1:
            pred = remove_small_components(pred, min_area)
        inter[sl] = (pred & masks[sl]).sum(axis=(1, 2))
        pred_area[sl] = pred.sum(axis=(1, 2))
    gt_area = masks.sum(axis=(1, 2), dtype=np.int64)
    return inter, pred_area, gt_area


def _iou_dice_from_counts(
    inter: np.ndarray, pred_area: np.ndarray, gt_area: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    union = pred_area + gt_area - inter
    total = pred_area + gt_area
    empty = total == 0  # both empty: a perfect (trivial) segmentation
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
        dice = np.where(empty, 1.0, 2.0 * inter / np.maximum(total, 1))
    return iou, dice


def segmentation_scores(
    maps: Any, masks: Any, threshold: float, *, min_area: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image IoU and Dice of ``maps >= threshold`` against ``masks``.

    Args:
        maps: Shape: (N, 1, H, W) or (N, H, W).
        masks: binary. Same shape as ``maps``.
        threshold: binarisation threshold on the map values.
        min_area: drop predicted components smaller than this (pixels) before scoring.

    Returns:
        ``(iou, dice)``. Shape: (N,) each.
    """
    m = check_maps(maps)
    g = check_masks(masks, m.shape)
    return _iou_dice_from_counts(*_overlap_counts(m, g, check_threshold(threshold), min_area))


def _reduce(values: np.ndarray, reduction: str) -> float | np.ndarray:
    if reduction == "mean":
        if values.size == 0:
            raise MetricError("no images to average over")
        return float(values.mean())
    if reduction == "none":
        return values
    raise MetricError(f"reduction must be 'mean' or 'none'; got {reduction!r}")


def iou(maps: Any, masks: Any, threshold: float, *, min_area: int = 0, reduction: str = "mean") -> float | np.ndarray:
    """Intersection over union of ``maps >= threshold``; mean over images (``reduction="mean"``) or per image.

    Both empty -> 1.0; exactly one empty -> 0.0.

    Args:
        maps: Shape: (N, 1, H, W) or (N, H, W).
        masks: binary. Same shape as ``maps``.
        threshold: binarisation threshold.
        min_area: connected-component filter applied to the prediction (0 = off).
        reduction: ``"mean"`` (float) or ``"none"`` (array of shape (N,)).
    """
    return _reduce(segmentation_scores(maps, masks, threshold, min_area=min_area)[0], reduction)


def dice(
    maps: Any, masks: Any, threshold: float, *, min_area: int = 0, reduction: str = "mean"
) -> float | np.ndarray:
    """Dice (F1) of ``maps >= threshold``; mean over images (``reduction="mean"``) or per image.

    Both empty -> 1.0; exactly one empty -> 0.0. Arguments as :func:`iou`.
    """
    return _reduce(segmentation_scores(maps, masks, threshold, min_area=min_area)[1], reduction)


def candidate_thresholds(maps: Any, num_thresholds: int = 256) -> np.ndarray:
    """Thresholds searched by :func:`best_dice_threshold`, increasing.

    All distinct map values when there are at most ``num_thresholds`` of them (the search is then exact);
    otherwise half quantiles of the pixel values (read from a strided subsample of at most 2^20 pixels)
    and half evenly spaced between the minimum and the maximum, so both dense and sparse score ranges are
    covered.
    """
    m = check_maps(maps)
    flat = m.reshape(-1)
    if flat.size == 0:
        raise MetricError("no pixels to choose a threshold from")
    stride = max(1, flat.size >> 20)
    sample = flat[::stride]
    uniq = np.unique(sample)
    if stride == 1 and uniq.size <= num_thresholds:
        return uniq.astype(np.float64)
    n_q = num_thresholds // 2
    qs = np.quantile(sample, np.linspace(0.0, 1.0, n_q), method="lower")
    lin = np.linspace(float(flat.min()), float(flat.max()), num_thresholds - n_q)
    # float32-representable, so that `maps >= t` means the same in the search and in later scoring
    return np.unique(np.r_[qs, lin].astype(np.float32)).astype(np.float64)


def best_dice_threshold(
    maps: Any, masks: Any, *, min_area: int = 0, num_thresholds: int = 256
) -> tuple[float, float]:
    """The threshold that maximises the mean per-image Dice on the given images (the oracle).

    Used on test data this is an upper bound, reported apart from the validation-chosen threshold.

    Without post-processing all candidates are scored in one pass over the pixels (per-image histograms of
    the candidate thresholds). With ``min_area > 0`` each candidate needs its own filtering pass, so the
    search is coarse-to-fine (about 32 + 2 * num_thresholds / 32 passes).

    Args:
        maps: Shape: (N, 1, H, W) or (N, H, W).
        masks: binary. Same shape as ``maps``.
        min_area: connected-component filter (0 = off).
        num_thresholds: size of the candidate grid (see :func:`candidate_thresholds`).

    Returns:
        ``(threshold, mean_dice)``; on ties the lowest threshold.
    """
    m = check_maps(maps)
    g = check_masks(masks, m.shape)
    if m.shape[0] == 0:
        raise MetricError("no images to choose a threshold on")
    cands = candidate_thresholds(m, num_thresholds)
    if min_area > 1:
        return _best_dice_filtered(m, g, cands, min_area)
    mean_dice = _dice_curve(m, g, cands)
    k = int(np.argmax(mean_dice))
    return float(cands[k]), float(mean_dice[k])


def _best_dice_filtered(m: np.ndarray, g: np.ndarray, cands: np.ndarray, min_area: int) -> tuple[float, float]:
    """Coarse-to-fine search when every candidate needs its own connected-component pass.

    Scores about 32 evenly spaced candidates, then every candidate between the best one's two coarse
    neighbours; exact when the mean Dice has a single peak over the grid.
    """
    cache: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in cache:
            cache[k] = float(_iou_dice_from_counts(*_overlap_counts(m, g, float(cands[k]), min_area))[1].mean())
        return cache[k]

    coarse = np.unique(np.linspace(0, cands.size - 1, min(32, cands.size)).round().astype(int))
    best = max(coarse, key=lambda k: (score(int(k)), -k))
    pos = int(np.searchsorted(coarse, best))
    lo = int(coarse[max(pos - 1, 0)])
    hi = int(coarse[min(pos + 1, coarse.size - 1)])
    k = max(range(lo, hi + 1), key=lambda k: (score(k), -k))
    return float(cands[k]), cache[k]


def _dice_curve(m: np.ndarray, g: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Mean Dice at every candidate threshold from per-image histograms of candidate indices."""
    n, k = m.shape[0], cands.size
    pred_area = np.zeros((n, k), np.int64)
    inter = np.zeros((n, k), np.int64)
    c32 = cands.astype(np.float32)
    for start in range(0, n, _IMAGES_PER_STEP):
        mm, gg = m[start:start + _IMAGES_PER_STEP], g[start:start + _IMAGES_PER_STEP]
        b = mm.shape[0]
        # j = number of candidates <= value: the pixel is predicted at candidates 0 .. j-1
        j = np.searchsorted(c32, mm.reshape(b, -1), side="right")
        j += (np.arange(b) * (k + 1))[:, None]
        hist_all = np.bincount(j.ravel(), minlength=b * (k + 1)).reshape(b, k + 1)
        hist_pos = np.bincount(j[gg.reshape(b, -1)], minlength=b * (k + 1)).reshape(b, k + 1)
        # count of pixels with j > c, i.e. predicted at candidate c
        pred_area[start:start + b] = np.cumsum(hist_all[:, ::-1], axis=1)[:, ::-1][:, 1:]
        inter[start:start + b] = np.cumsum(hist_pos[:, ::-1], axis=1)[:, ::-1][:, 1:]
    gt_area = g.sum(axis=(1, 2), dtype=np.int64)[:, None]
    total = pred_area + gt_area
    dice_nk = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return dice_nk.mean(axis=0)


def quantile_threshold(normal_maps: Any, quantile: float = 0.99) -> float:
    """The ``quantile`` of the pixel scores of (held-out) normal images.

    With the default 0.99 about 1% of normal pixels are called abnormal.

    Args:
        normal_maps: maps of normal images only. Shape: (N, 1, H, W) or (N, H, W).
        quantile: in (0, 1).
    """
    if not 0.0 < quantile < 1.0:
        raise MetricError(f"quantile must be in (0, 1); got {quantile}")
    m = check_maps(normal_maps)
    if m.size == 0:
        raise MetricError("no normal pixels to take a quantile of")
    return float(np.quantile(m.reshape(-1), quantile))


def select_threshold(
    val_maps: Any, val_masks: Any = None, *, quantile: float = 0.99, min_area: int = 0, num_thresholds: int = 256
) -> tuple[float, str]:
    """Choose the binarisation threshold on validation data, following the rule of the package docstring.

    If ``val_masks`` contains lesion pixels, the threshold with the best mean Dice over the validation images
    that have a lesion; otherwise the ``quantile`` of the validation pixel scores (which must then come from
    normal images).

    Args:
        val_maps: validation maps. Shape: (N, 1, H, W) or (N, H, W).
        val_masks: their binary masks, or None. Same shape as ``val_maps``.
        quantile: used when there are no lesion masks.
        min_area: connected-component filter used with the best-Dice rule.
        num_thresholds: candidate grid size of the best-Dice rule.

    Returns:
        ``(threshold, rule)`` where ``rule`` says in words how it was chosen.
    """
    m = check_maps(val_maps)
    if val_masks is not None:
        g = check_masks(val_masks, m.shape, name="val_masks")
        has_lesion = g.any(axis=(1, 2))
        if has_lesion.any():
            t, _ = best_dice_threshold(m[has_lesion], g[has_lesion], min_area=min_area, num_thresholds=num_thresholds)
            return t, f"best mean Dice on {int(has_lesion.sum())} validation images with lesion masks"
    t = quantile_threshold(m, quantile)
    return t, f"{quantile:g} quantile of the pixel scores of {m.shape[0]} held-out normal images"


def localisation_groups(
    maps: Any,
    masks: Any,
    threshold: float,
    *,
    n_groups: int = 5,
    group_size: int = 100,
    generator: torch.Generator | None = None,
    min_area: int = 0,
) -> dict[str, Any]:
    """The papers' localisation protocol: mean IoU/Dice over random groups of abnormal images.

    MSACL Sec. 4.5 / CCD Table 2: draw ``group_size`` abnormal images at random (without replacement within a
    group, groups drawn independently), average IoU and Dice within each group, and report the mean over
    ``n_groups`` groups. With fewer than ``group_size`` images each group holds all of them (the result's
    ``note`` says so, and the groups are then identical).

    Args:
        maps: maps of the abnormal test images. Shape: (N, 1, H, W) or (N, H, W).
        masks: their binary masks. Same shape as ``maps``.
        threshold: binarisation threshold.
        n_groups: number of groups.
        group_size: images per group.
        generator: draws the groups; ``None`` uses a generator seeded with 0.
        min_area: connected-component filter (0 = off).

    Returns:
        dict with ``iou``, ``dice`` (means over groups), ``iou_std``, ``dice_std`` (spread over groups),
        ``group_iou``, ``group_dice`` (per group), ``n_groups``, ``group_size`` (actual), ``n_images`` and
        ``note`` (None unless there were too few images).
    """
    if n_groups < 1 or group_size < 1:
        raise MetricError(f"n_groups and group_size must be >= 1; got {n_groups} and {group_size}")
    iou_img, dice_img = segmentation_scores(maps, masks, threshold, min_area=min_area)
    n = iou_img.size
    if n == 0:
        raise MetricError("no abnormal images for the localisation groups")
    g = as_generator(generator)
    size = min(group_size, n)
    note = None
    if n < group_size:
        note = f"only {n} abnormal images (< {group_size}): every group holds all {n}, so the groups are identical"
    group_iou, group_dice = [], []
    for _ in range(n_groups):
        idx = torch.randperm(n, generator=g, device=g.device)[:size].cpu().numpy()
        group_iou.append(float(iou_img[idx].mean()))
        group_dice.append(float(dice_img[idx].mean()))
    return {
        "iou": float(np.mean(group_iou)),
        "dice": float(np.mean(group_dice)),
        "iou_std": float(np.std(group_iou)),
        "dice_std": float(np.std(group_dice)),
        "group_iou": group_iou,
        "group_dice": group_dice,
        "n_groups": n_groups,
        "group_size": size,
        "n_images": n,
        "note": note,
    }
