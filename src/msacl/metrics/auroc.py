"""Area under the ROC curve for image scores and for pixel maps, ROC points and bootstrap intervals.

AUROC is computed exactly as the Mann-Whitney statistic, P(score_abnormal > score_normal) plus half the
probability of a tie, which is what the trapezoidal area under the full ROC curve gives (and what
``sklearn.metrics.roc_auc_score`` returns). Pair counts are accumulated as integers, so the value is exact
for any number of pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from msacl.metrics._checks import (
    MetricError,
    check_labels,
    check_maps,
    check_masks,
    check_scores,
    require_both_classes,
)
from msacl.runs import as_generator

# Values searched per step in the pixel AUROC; bounds the int64 temporaries to 2 x 32 MiB.
_CHUNK = 1 << 22


def _auroc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact AUROC from the scores of the positive and the negative class; sorts both arrays in place.

    With both sides sorted, each positive's rank among the negatives is a binary search whose queries move
    monotonically through memory, which is several times faster than sklearn's argsort over all values.
    Counting 2 per ordered pair and 1 per tie keeps the statistic in (exact) integers. Pair counts add up over
    any partition of the negatives, so the negatives are cut into one part per thread and the parts are sorted
    and searched concurrently (numpy releases the GIL in both).
    """
    negs = np.array_split(neg, _threads(neg.size))

    def twice_u(part: np.ndarray) -> int:
        total = 0
        for start in range(0, pos.size, _CHUNK):
            q = pos[start:start + _CHUNK]
            left = np.searchsorted(part, q, side="left")  # negatives of this part strictly below each positive
            right = np.searchsorted(part, q, side="right")
            total += 2 * int(left.sum()) + int((right - left).sum())
        return total

    with ThreadPoolExecutor(len(negs)) as pool:
        list(pool.map(np.ndarray.sort, [pos, *negs]))  # in place; views of neg sort their own slices
        counts = list(pool.map(twice_u, negs))
    return sum(counts) / (2.0 * pos.size * neg.size)


def _threads(n: int) -> int:
    """Threads for sorting n values: one per torch thread, none extra below a million values."""
    return max(1, min(torch.get_num_threads(), 8, n // 1_000_000))


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level AUROC (ties count one half).

    Args:
        scores: anomaly score per image, higher = more anomalous. Shape: (N,).
        labels: 0 = normal, 1 = abnormal. Shape: (N,).

    Returns:
        AUROC in [0, 1].

    Raises:
        MetricError: shape mismatch, NaN scores, labels other than 0/1, or only one class present.

    >>> image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    require_both_classes(y, "image AUROC")
    return _auroc_from_groups(s[y], s[~y])


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score (as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``).

    Args:
        scores: Shape: (N,).
        labels: 0/1. Shape: (N,).

    Returns:
        ``(fpr, tpr, thresholds)``, thresholds decreasing with ``inf`` first so that the curve starts at (0, 0);
        an image is called abnormal when its score is ``>=`` the threshold. Shape: (K + 1,) each.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    require_both_classes(y, "a ROC curve")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores: all tied images switch together
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC over every pixel of every given image (exact, ties count one half).

    Memory: besides the inputs, one float32 copy of the pixel scores (split into lesion / background, sorted
    in place) and a bool mask; no float64 copy of the pixels and no argsort index array, so a
    1000 x 256 x 256 test set needs about 330 MB.

    Args:
        maps: anomaly maps, higher = more anomalous. Shape: (N, 1, H, W) or (N, H, W).
        masks: binary ground truth (1 = lesion); normal images have all-zero masks. Same shape as ``maps``.

    Returns:
        AUROC in [0, 1].

    Raises:
        MetricError: shape mismatch, non-binary masks, NaN in maps, or no lesion (or no background) pixel.
    """
    m = check_maps(maps)
    g = check_masks(masks, m.shape)
    n_pos = int(g.sum())
    if n_pos == 0 or n_pos == g.size:
        kind = "lesion" if n_pos == 0 else "background"
        raise MetricError(f"pixel AUROC needs both lesion and background pixels; the masks have no {kind} pixel")
    return _auroc_from_groups(m[g], m[~g])


def bootstrap_ci(
    scores: Any,
    labels: Any,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    generator: torch.Generator | None = None,
    statistic: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the image AUROC (or of another image-level statistic).

    Normal and abnormal images are resampled separately (stratified bootstrap): every resample keeps the
    test set's class counts, so AUROC is defined for all of them and the interval reflects the sampling of
    images, not of the class ratio.

    Args:
        scores: Shape: (N,).
        labels: 0/1. Shape: (N,).
        n_resamples: number of bootstrap resamples.
        level: coverage of the interval (0.95 gives the 2.5 and 97.5 percentiles).
        generator: source of the resampling indices; ``None`` uses a generator seeded with 0.
        statistic: ``f(scores, labels) -> float`` evaluated on each resample (labels as 0/1 ints);
            ``None`` uses a vectorised AUROC.

    Returns:
        ``(low, high)``.
    """
    if n_resamples < 1:
        raise MetricError(f"n_resamples must be >= 1; got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise MetricError(f"level must be in (0, 1); got {level}")
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    require_both_classes(y, "a bootstrap AUROC interval")
    g = as_generator(generator)
    pos, neg = s[y], s[~y]
    idx_pos = torch.randint(0, pos.size, (n_resamples, pos.size), generator=g, device=g.device).cpu().numpy()
    idx_neg = torch.randint(0, neg.size, (n_resamples, neg.size), generator=g, device=g.device).cpu().numpy()
    if statistic is None:
        stats = _auroc_resamples(pos, neg, idx_pos, idx_neg)
    else:
        lab = np.r_[np.ones(pos.size, int), np.zeros(neg.size, int)]
        stats = np.array([statistic(np.r_[pos[ip], neg[ineg]], lab) for ip, ineg in zip(idx_pos, idx_neg, strict=True)])
    alpha = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(stats, [alpha, 100.0 - alpha])
    return float(low), float(high)


def _auroc_resamples(pos: np.ndarray, neg: np.ndarray, idx_pos: np.ndarray, idx_neg: np.ndarray) -> np.ndarray:
    """AUROC of each resample from mid-ranks: U = sum of positive ranks - n_pos (n_pos + 1) / 2."""
    n_pos, n_neg = pos.size, neg.size
    out = np.empty(idx_pos.shape[0])
    step = max(1, (1 << 23) // (n_pos + n_neg))
    for start in range(0, idx_pos.shape[0], step):
        vals = np.concatenate([pos[idx_pos[start:start + step]], neg[idx_neg[start:start + step]]], axis=1)
        ranks = rankdata(vals, method="average", axis=1)
        u = ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
        out[start:start + step] = u / (n_pos * n_neg)
    return out
