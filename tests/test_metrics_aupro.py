"""AUPRO against a naive threshold-by-threshold reference and closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msacl.metrics import MetricError, aupro, pro_curve


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of a 2-D binary mask by flood fill (independent of scipy)."""
    seen = np.zeros_like(mask, bool)
    out = []
    h, w = mask.shape
    for r0 in range(h):
        for c0 in range(w):
            if not mask[r0, c0] or seen[r0, c0]:
                continue
            region = np.zeros_like(mask, bool)
            stack = [(r0, c0)]
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                region[r, c] = True
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            stack.append((rr, cc))
            out.append(region)
    return out


def naive_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """MVTec AD's definition, one threshold at a time: PRO = mean region overlap, FPR over background."""
    maps, masks = maps[:, 0], masks[:, 0].astype(bool)
    regions = [(i, r) for i in range(len(masks)) for r in _regions(masks[i])]
    background = ~masks
    xs, ys = [0.0], [0.0]
    for t in sorted(np.unique(maps), reverse=True):
        pred = maps >= t
        ys.append(np.mean([pred[i][r].mean() for i, r in regions]))
        xs.append((pred & background).sum() / background.sum())
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for j in range(1, len(xs)):
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        if x0 >= limit:
            break
        if x1 > limit:  # interpolate the curve at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def test_aupro_closed_form():
    # one 2-px region with scores 0.9 and 0.5; 14 background px, one of them at 0.7, the rest at 0.1.
    # PRO is 0.5 from FPR 0 to 1/14, then 1 up to 0.3: area = 0.5/14 + (0.3 - 1/14).
    maps = np.full((1, 1, 4, 4), 0.1, np.float32)
    masks = np.zeros((1, 1, 4, 4), np.float32)
    masks[0, 0, 0, :2] = 1
    maps[0, 0, 0, 0], maps[0, 0, 0, 1], maps[0, 0, 3, 3] = 0.9, 0.5, 0.7
    expected = (0.5 / 14 + (0.3 - 1 / 14)) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected)
    assert naive_aupro(maps, masks) == pytest.approx(expected)


def test_aupro_perfect_and_inverted_maps():
    masks = np.zeros((3, 1, 8, 8), np.float32)
    masks[0, 0, 1:3, 1:3] = 1
    masks[1, 0, 5:8, 0:2] = 1
    assert aupro(masks * 2.0 + 1.0, masks) == pytest.approx(1.0)
    assert aupro(1.0 - masks, masks) == pytest.approx(0.0)
    # full range: a constant map has PRO = FPR, area 1/2
    assert aupro(np.zeros_like(masks), masks, fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_weights_regions_not_pixels():
    # a big region fully found and a small one missed: PRO = 0.5 at low FPR, whatever the region sizes
    masks = np.zeros((1, 1, 10, 10), np.float32)
    masks[0, 0, 0:5, 0:5] = 1  # 25 px
    masks[0, 0, 8, 8] = 1  # 1 px
    maps = np.zeros_like(masks)
    maps[0, 0, 0:5, 0:5] = 1.0
    fpr, pro = pro_curve(maps, masks)
    assert pro[np.searchsorted(fpr, 0.0, side="right") - 1] == pytest.approx(0.5)
    assert aupro(maps, masks) == pytest.approx(naive_aupro(maps, masks))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 6])
def test_aupro_matches_naive_reference(seed, levels):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(4, 1, 12, 12)
    masks[0, :, 2:5, 2:6] = 1
    masks[0, :, 8:11, 8:10] = 1  # two regions in one image
    masks[1, :, 6:9, 1:4] = 1
    masks[2, :, 0, 0] = 1
    masks[2, :, 1, 1] = 1  # diagonal neighbours: one region under 8-connectivity
    # image 3 is normal
    maps = torch.rand(4, 1, 12, 12, generator=gen) + 0.6 * masks
    if levels is not None:
        maps = (maps * levels).round() / levels
    m, g = maps.numpy(), masks.numpy()
    for limit in (0.3, 0.05, 1.0):
        assert aupro(m, g, fpr_limit=limit) == pytest.approx(naive_aupro(m, g, limit), abs=1e-9)


def test_aupro_errors():
    with pytest.raises(MetricError, match="lesion region"):
        aupro(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4)))
    with pytest.raises(MetricError, match="background"):
        aupro(np.zeros((1, 1, 4, 4)), np.ones((1, 1, 4, 4)))
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(np.zeros((1, 1, 4, 4)), np.ones((1, 1, 4, 4)), fpr_limit=0)
