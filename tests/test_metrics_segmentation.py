"""IoU/Dice on hand-built masks, connected components, threshold search and the group protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from msacl.metrics import (
    MetricError,
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


def _hand_built() -> tuple[np.ndarray, np.ndarray]:
    """Four 6x6 images with known overlaps at threshold 0.5.

    0: GT 2x2 (4 px), prediction 2x3 (6 px) covering it -> IoU 4/6, Dice 8/10.
    1: GT 3x3 (9 px), prediction 3x1 inside it (3 px) -> IoU 3/9, Dice 6/12.
    2: GT empty, prediction empty -> 1, 1.
    3: GT 1 px, prediction elsewhere (2 px) -> 0, 0.
    """
    maps = np.zeros((4, 1, 6, 6), np.float32)
    masks = np.zeros((4, 1, 6, 6), np.float32)
    masks[0, 0, 1:3, 1:3] = 1
    maps[0, 0, 1:3, 1:4] = 0.9
    masks[1, 0, 2:5, 2:5] = 1
    maps[1, 0, 2:5, 3] = 0.7
    masks[3, 0, 0, 0] = 1
    maps[3, 0, 5, 4:6] = 0.6
    return maps, masks


IOU = np.array([4 / 6, 3 / 9, 1.0, 0.0])
DICE = np.array([8 / 10, 6 / 12, 1.0, 0.0])


def test_iou_dice_closed_form_per_image_and_mean():
    maps, masks = _hand_built()
    np.testing.assert_allclose(iou(maps, masks, 0.5, reduction="none"), IOU)
    np.testing.assert_allclose(dice(maps, masks, 0.5, reduction="none"), DICE)
    assert iou(maps, masks, 0.5) == pytest.approx(IOU.mean())
    assert dice(torch.from_numpy(maps), torch.from_numpy(masks), 0.5) == pytest.approx(DICE.mean())
    # the threshold is inclusive: 0.9 still predicts image 0's pixels, above 0.9 nothing is predicted
    assert iou(maps[:1], masks[:1], 0.9) == pytest.approx(4 / 6)
    np.testing.assert_allclose(iou(maps, masks, 0.95, reduction="none"), [0.0, 0.0, 1.0, 0.0])


def test_iou_dice_match_sklearn_on_non_empty_images():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 1, 12, 12, generator=gen) < 0.4
    maps = torch.rand(5, 1, 12, 12, generator=gen) + 0.3 * masks
    iou_img, dice_img = segmentation_scores(maps, masks, 0.7)
    for i in range(5):
        gt, pred = masks[i].numpy().ravel(), (maps[i] >= 0.7).numpy().ravel()
        assert iou_img[i] == pytest.approx(jaccard_score(gt, pred))
        assert dice_img[i] == pytest.approx(f1_score(gt, pred))
    # Dice = 2 IoU / (1 + IoU) image by image
    np.testing.assert_allclose(dice_img, 2 * iou_img / (1 + iou_img))


def test_remove_small_components_uses_eight_connectivity():
    pred = np.zeros((8, 8), bool)
    pred[0, 0] = pred[1, 1] = pred[2, 2] = True  # 3 px joined only diagonally
    pred[5:7, 5:8] = True  # 6 px block
    pred[0, 7] = True  # 1 px
    kept = remove_small_components(pred, 3)
    assert kept[0, 0] and kept[2, 2] and kept[5:7, 5:8].all()
    assert not kept[0, 7]
    kept = remove_small_components(pred[None, None], 4)
    assert kept.shape == (1, 1, 8, 8)
    assert kept.sum() == 6
    assert remove_small_components(pred, 0).sum() == pred.sum()


def test_min_area_changes_iou_as_expected():
    maps, masks = _hand_built()
    # image 3's false positive has 2 px: dropping it turns "GT 1 px vs wrong 2 px" into "GT 1 px vs nothing"
    # (still 0), and image 1's 3-px prediction disappears with min_area=4 (IoU 0)
    np.testing.assert_allclose(iou(maps, masks, 0.5, min_area=3, reduction="none"), IOU)
    np.testing.assert_allclose(iou(maps, masks, 0.5, min_area=4, reduction="none"), [4 / 6, 0.0, 1.0, 0.0])


def _brute_force_best(maps, masks, min_area=0):
    best_t, best_d = None, -1.0
    for t in np.unique(maps):
        d = dice(maps, masks, float(t), min_area=min_area)
        if d > best_d:
            best_t, best_d = float(t), d
    return best_t, best_d


@pytest.mark.parametrize("min_area", [0, 3])
def test_best_dice_threshold_equals_brute_force(min_area):
    gen = torch.Generator().manual_seed(2)
    masks = torch.zeros(6, 1, 10, 10)
    masks[:, :, 3:7, 2:6] = 1
    maps = ((torch.rand(6, 1, 10, 10, generator=gen) + 0.5 * masks) * 10).round() / 10
    t, d = best_dice_threshold(maps, masks, min_area=min_area)
    t_ref, d_ref = _brute_force_best(maps.numpy(), masks.numpy(), min_area)
    assert d == pytest.approx(d_ref)
    assert t == pytest.approx(t_ref)
    assert d == pytest.approx(dice(maps, masks, t, min_area=min_area))


def test_best_dice_threshold_on_a_grid_is_close_to_exhaustive():
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(4, 1, 24, 24, generator=gen) < 0.2
    maps = torch.rand(4, 1, 24, 24, generator=gen) + 0.5 * masks
    cands = candidate_thresholds(maps, 64)
    assert 32 <= cands.size <= 64 and np.all(np.diff(cands) > 0)
    t, d = best_dice_threshold(maps, masks, num_thresholds=64)
    _, d_exact = _brute_force_best(maps.numpy(), masks.numpy())
    assert d <= d_exact + 1e-12
    assert d > d_exact - 0.01
    assert d == pytest.approx(dice(maps, masks, t))


def test_quantile_and_select_threshold_rules():
    gen = torch.Generator().manual_seed(4)
    normal = torch.rand(10, 1, 8, 8, generator=gen)
    assert quantile_threshold(normal) == pytest.approx(np.quantile(normal.numpy(), 0.99))
    t, rule = select_threshold(normal, None, quantile=0.9)
    assert t == pytest.approx(np.quantile(normal.numpy(), 0.9))
    assert "0.9 quantile" in rule and "10 held-out normal" in rule
    # all-empty validation masks (normal images) fall back to the quantile rule
    t0, rule0 = select_threshold(normal, torch.zeros_like(normal))
    assert "quantile" in rule0 and t0 == pytest.approx(quantile_threshold(normal))
    # masks with lesions: best Dice over the images that have one
    maps, masks = _hand_built()
    t, rule = select_threshold(maps, masks)
    lesion = masks.any(axis=(1, 2, 3))
    assert t == best_dice_threshold(maps[lesion], masks[lesion])[0]
    assert "best mean Dice on 3 validation images" in rule
    with pytest.raises(MetricError, match="quantile"):
        quantile_threshold(normal, 1.5)


def _graded(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images whose IoU at threshold 0.5 is k / 10 for k = image index % 11 (GT 10 px, prediction k px)."""
    maps = np.zeros((n, 1, 4, 10), np.float32)
    masks = np.zeros((n, 1, 4, 10), np.float32)
    expected = np.empty(n)
    for i in range(n):
        k = i % 11
        masks[i, 0, 0, :] = 1
        maps[i, 0, 0, :k] = 1
        expected[i] = k / 10
    return maps, masks, expected


def test_localisation_groups_match_naive_protocol():
    maps, masks, expected = _graded(150)
    res = localisation_groups(maps, masks, 0.5, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    naive = [expected[torch.randperm(150, generator=g)[:100].numpy()].mean() for _ in range(5)]
    np.testing.assert_allclose(res["group_iou"], naive)
    assert res["iou"] == pytest.approx(np.mean(naive))
    assert res["iou_std"] == pytest.approx(np.std(naive))
    assert res["group_size"] == 100 and res["n_groups"] == 5 and res["note"] is None
    assert len(set(res["group_iou"])) > 1  # the groups differ
    same = localisation_groups(maps, masks, 0.5, generator=torch.Generator().manual_seed(9))
    assert same == res


def test_localisation_groups_with_fewer_images_says_so():
    maps, masks, expected = _graded(30)
    res = localisation_groups(maps, masks, 0.5, n_groups=5, group_size=100)
    assert res["group_size"] == 30
    assert "only 30 abnormal images" in res["note"]
    assert res["iou"] == pytest.approx(expected.mean())
    assert res["iou_std"] == pytest.approx(0.0, abs=1e-12)


def test_segmentation_errors():
    maps, masks = _hand_built()
    with pytest.raises(MetricError, match="shape"):
        iou(maps, masks[:, :, :5], 0.5)
    with pytest.raises(MetricError, match="binary"):
        dice(maps, masks * 0.5, 0.5)
    with pytest.raises(MetricError, match="reduction"):
        iou(maps, masks, 0.5, reduction="sum")
    with pytest.raises(MetricError, match="threshold"):
        iou(maps, masks, "high")
