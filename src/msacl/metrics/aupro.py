"""Area under the per-region-overlap curve (AUPRO), as defined for MVTec AD (Bergmann et al., IJCV 2021).

For a threshold t, the per-region overlap PRO(t) is the mean over every connected ground-truth region
(8-connected, counted over all images) of the fraction of the region's pixels with map value >= t; the
false-positive rate FPR(t) is the fraction of background pixels (mask 0, normal images included) with value
>= t. AUPRO is the trapezoidal area under PRO against FPR from 0 to ``fpr_limit`` (0.3), divided by
``fpr_limit`` so that a perfect map scores 1. Between thresholds the curve is the straight line that the
official evaluation code draws, and the area at the limit is interpolated the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from msacl.metrics._checks import MetricError, check_maps, check_masks

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The PRO-vs-FPR curve over all thresholds, from (0, 0) to (1, 1).

    Only thresholds equal to a lesion pixel's value add corner points: elsewhere PRO is constant and the
    official curve's extra points lie on horizontal lines, which leaves every area unchanged. Memory: one
    float32 copy of the background pixel scores; no argsort over all pixels.

    Args:
        maps: Shape: (N, 1, H, W) or (N, H, W).
        masks: binary ground truth. Same shape as ``maps``.

    Returns:
        ``(fpr, pro)``, fpr non-decreasing. Shape: (K,) each.
    """
    m = check_maps(maps)
    g = check_masks(masks, m.shape)
    region_vals, region_w = [], []
    n_regions = 0
    for img, gt in zip(m, g, strict=True):
        if not gt.any():
            continue
        lab, n = ndimage.label(gt, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(lab.ravel())
        inside = lab > 0
        region_vals.append(img[inside])
        region_w.append(1.0 / sizes[lab[inside]])
        n_regions += n
    if n_regions == 0:
        raise MetricError("AUPRO needs at least one lesion region; all masks are empty")
    ok = np.sort(m[~g])
    n_ok = ok.size
    if n_ok == 0:
        raise MetricError("AUPRO needs background pixels; the masks cover every pixel")
    rv = np.concatenate(region_vals)
    rw = np.concatenate(region_w)
    order = np.argsort(-rv, kind="stable")
    rv, rw = rv[order], rw[order]
    last = np.r_[np.nonzero(np.diff(rv))[0], rv.size - 1]
    u = rv[last]  # distinct lesion values, decreasing
    pro_ge = np.cumsum(rw)[last] / n_regions
    pro_gt = np.r_[0.0, pro_ge[:-1]]
    fpr_ge = (n_ok - np.searchsorted(ok, u, side="left")) / n_ok
    fpr_gt = (n_ok - np.searchsorted(ok, u, side="right")) / n_ok
    fpr = np.r_[0.0, np.column_stack([fpr_gt, fpr_ge]).ravel(), 1.0]
    pro = np.r_[0.0, np.column_stack([pro_gt, pro_ge]).ravel(), 1.0]
    return np.clip(fpr, 0.0, 1.0), np.clip(pro, 0.0, 1.0)


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under y(x) on [0, x_max], interpolating y linearly at x_max (MVTec's rule)."""
    ins = int(np.searchsorted(x, x_max, side="right"))
    keep = slice(0, ins)
    area = float(np.sum(0.5 * (y[keep][1:] + y[keep][:-1]) * np.diff(x[keep])))
    if ins < x.size and x[ins - 1] < x_max:
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_max) * (x_max - x0)
    return area


def aupro(maps: Any, masks: Any, *, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AUPRO@0.3).

    Args:
        maps: anomaly maps, higher = more anomalous. Shape: (N, 1, H, W) or (N, H, W).
        masks: binary ground truth; at least one lesion region and one background pixel. Same shape.
        fpr_limit: upper end of the FPR integration range, in (0, 1].

    Returns:
        AUPRO in [0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    return float(_trapezoid_to(fpr, pro, fpr_limit) / fpr_limit)
