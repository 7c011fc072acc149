"""evaluate(): the metric record every test run writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from msacl.metrics import (
    MetricError,
    aupro,
    best_dice_threshold,
    dice,
    evaluate,
    image_auroc,
    iou,
    pixel_auroc,
    quantile_threshold,
)


def _test_set(n_normal: int = 12, n_abnormal: int = 30, size: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = n_normal + n_abnormal
    labels = torch.cat([torch.zeros(n_normal), torch.ones(n_abnormal)])
    masks = torch.zeros(n, 1, size, size)
    for i in range(n_normal, n):
        r, c = torch.randint(0, size - 6, (2,), generator=gen).tolist()
        h, w = torch.randint(2, 6, (2,), generator=gen).tolist()
        masks[i, 0, r:r + h, c:c + w] = 1
    maps = torch.rand(n, 1, size, size, generator=gen) + 0.5 * masks
    scores = maps.amax(dim=(1, 2, 3))
    return scores, labels, maps, masks


def test_evaluate_agrees_with_the_single_metrics():
    scores, labels, maps, masks = _test_set()
    ab = labels.bool()
    out = evaluate(scores, labels, maps, masks, threshold=1.1, n_bootstrap=200,
                   generator=torch.Generator().manual_seed(0))
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["image_auroc_ci_low"] <= out["image_auroc"] <= out["image_auroc_ci_high"]
    assert out["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks))
    assert out["aupro"] == pytest.approx(aupro(maps, masks))
    assert out["threshold"] == 1.1 and out["threshold_rule"] == "given"
    assert out["iou"] == pytest.approx(iou(maps[ab], masks[ab], 1.1))  # abnormal images only
    assert out["dice"] == pytest.approx(dice(maps[ab], masks[ab], 1.1))
    t_or, d_or = best_dice_threshold(maps[ab], masks[ab])
    assert out["oracle_threshold"] == t_or and out["dice_oracle"] == pytest.approx(d_or)
    assert out["dice_oracle"] >= out["dice"]
    # 30 abnormal images < 100: the groups hold all of them and equal the plain means
    assert out["groups_size"] == 30 and out["groups_n"] == 5
    assert out["groups_iou"] == pytest.approx(out["iou"])
    assert out["groups_dice_oracle"] == pytest.approx(out["dice_oracle"])
    assert any("only 30 abnormal images" in n for n in out["notes"])
    assert (out["n_images"], out["n_normal"], out["n_abnormal"]) == (42, 12, 30)
    json.dumps(out)  # JSON-ready as it is


def test_evaluate_is_seeded():
    scores, labels, maps, masks = _test_set(n_abnormal=120)
    kw = dict(threshold=1.0, n_bootstrap=100, group_size=50)
    a = evaluate(scores, labels, maps, masks, generator=torch.Generator().manual_seed(1), **kw)
    b = evaluate(scores, labels, maps, masks, generator=torch.Generator().manual_seed(1), **kw)
    c = evaluate(scores, labels, maps, masks, generator=torch.Generator().manual_seed(2), **kw)
    assert a == b
    assert a["groups_iou"] != c["groups_iou"] and a["image_auroc_ci_low"] != c["image_auroc_ci_low"]
    assert a["groups_size"] == 50 and a["groups_iou_std"] > 0


def test_evaluate_chooses_threshold_on_validation_data():
    scores, labels, maps, masks = _test_set()
    val_normal = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    out = evaluate(scores, labels, maps, masks, val_maps=val_normal, n_bootstrap=0)
    assert out["threshold"] == pytest.approx(quantile_threshold(val_normal, 0.99))
    assert "quantile" in out["threshold_rule"]
    assert out["image_auroc_ci_low"] is None and out["ci_level"] is None
    # validation maps with lesion masks: best-Dice rule
    _, _, vmaps, vmasks = _test_set(seed=3)
    out = evaluate(scores, labels, maps, masks, val_maps=vmaps, val_masks=vmasks, n_bootstrap=0)
    assert "best mean Dice" in out["threshold_rule"]
    # no validation data: IoU/Dice only at the oracle, and the record says why
    out = evaluate(scores, labels, maps, masks, n_bootstrap=0)
    assert out["iou"] is None and out["iou_oracle"] is not None
    assert any("oracle threshold only" in n for n in out["notes"])


def test_evaluate_without_maps_or_with_one_class():
    scores, labels, maps, masks = _test_set()
    out = evaluate(scores, labels, n_bootstrap=50)
    assert out["image_auroc"] == pytest.approx(image_auroc(scores, labels))
    assert "pixel_auroc" not in out
    out = evaluate(scores, labels, maps, n_bootstrap=0)
    assert any("no ground-truth masks" in n for n in out["notes"])
    # only abnormal images (a frames-with-masks set): pixel metrics still work, image AUROC is None
    ab = labels.bool()
    out = evaluate(scores[ab], labels[ab], maps[ab], masks[ab], threshold=1.0)
    assert out["image_auroc"] is None and any("all 30 test images are abnormal" in n for n in out["notes"])
    assert out["pixel_auroc"] == pytest.approx(pixel_auroc(maps[ab], masks[ab]))
    assert np.isfinite(out["iou"])


def test_evaluate_errors():
    scores, labels, maps, masks = _test_set()
    with pytest.raises(MetricError, match="without anomaly maps"):
        evaluate(scores, labels, masks=masks)
    with pytest.raises(MetricError, match="41 anomaly maps for 42 scores"):
        evaluate(scores, labels, maps[1:], masks[1:])
    with pytest.raises(MetricError, match="binary"):
        evaluate(scores, labels, maps, masks * 255)


def test_metrics_on_real_lesion_masks(shared_data):
    """Real Kvasir-SEG polyp masks (irregular shapes, several regions): maps = blurred masks + noise."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    files = sorted((shared_data / "kvasir_seg_patch128" / "test" / "masks").glob("*.png"))[:24]
    assert files, "kvasir_seg_patch128 has no masks"
    masks = np.stack([np.asarray(Image.open(f).convert("L")) > 127 for f in files])[:, None]
    rng = np.random.default_rng(0)
    maps = np.stack([gaussian_filter(m[0].astype(np.float32), 3) for m in masks])[:, None]
    maps += rng.normal(0, 0.05, maps.shape).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    # a blurred copy of the truth localises well but not perfectly
    t, d = best_dice_threshold(maps, masks)
    assert 0.85 < d < 1.0 and 0.2 < t < 0.8
    assert 0.7 < iou(maps, masks, t) < 1.0
    assert 0.7 < aupro(maps, masks) <= 1.0
