"""Image/pixel AUROC, ROC points and bootstrap intervals against scikit-learn and naive references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

import msacl.metrics.auroc as auroc_mod
from msacl.errors import MsaclError
from msacl.metrics import MetricError, bootstrap_ci, image_auroc, pixel_auroc, roc_curve


def _scores_labels(seed: int, n: int = 120, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + 0.8 * y
    if levels is not None:  # few distinct values: many ties
        s = np.round(s * levels / 4) / levels
    return s, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 3])
def test_image_auroc_matches_sklearn_including_ties(seed, levels):
    s, y = _scores_labels(seed, levels=levels)
    if levels is not None:
        assert np.unique(s).size < s.size // 4  # the tie case really has ties
    assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_image_auroc_closed_form_and_torch_input():
    # pairs (abnormal > normal): 0.35 beats 0.1 only; 0.8 beats both -> 3 of 4
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # all scores tied -> every pair is a tie -> 0.5
    assert image_auroc(torch.ones(6), torch.tensor([0, 1, 0, 1, 0, 1])) == 0.5
    assert image_auroc(torch.tensor([0.0, 1.0]), torch.tensor([1, 0])) == 0.0


def test_image_auroc_invariant_to_monotone_transforms():
    s, y = _scores_labels(7, levels=5)
    ref = image_auroc(s, y)
    for f in (np.exp, lambda v: 3 * v + 1, np.tanh, lambda v: rankdata(v, method="dense")):
        assert image_auroc(f(s), y) == pytest.approx(ref, abs=1e-12)
    # a decreasing transform flips the AUROC
    assert image_auroc(-s, y) == pytest.approx(1 - ref, abs=1e-12)


def test_roc_curve_matches_sklearn():
    s, y = _scores_labels(3, levels=4)
    fpr, tpr, thr = roc_curve(s, y)
    fpr_sk, tpr_sk, thr_sk = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    np.testing.assert_allclose(thr[1:], thr_sk[1:])
    assert np.isinf(thr[0])
    assert np.trapezoid(tpr, fpr) == pytest.approx(image_auroc(s, y))


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("lesion_fraction", [0.05, 0.8])  # lesion pixels the smaller or the larger class
def test_pixel_auroc_matches_sklearn(quantise, lesion_fraction):
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(6, 1, 16, 16, generator=gen) < lesion_fraction).float()
    maps = torch.rand(6, 1, 16, 16, generator=gen) + 0.4 * masks
    if quantise:
        maps = (maps * 4).round() / 4
    expected = roc_auc_score(masks.numpy().ravel(), maps.numpy().ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(maps[:, 0], masks[:, 0].bool()) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_chunked_equals_unchunked(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 1, 20, 20, generator=gen) < 0.3
    maps = ((torch.rand(4, 1, 20, 20, generator=gen) + 0.3 * masks) * 8).round()
    full = pixel_auroc(maps, masks)
    monkeypatch.setattr(auroc_mod, "_CHUNK", 7)
    assert pixel_auroc(maps, masks) == full
    assert full == pytest.approx(roc_auc_score(masks.numpy().ravel(), maps.numpy().ravel()), abs=1e-12)


def test_pixel_auroc_keeps_maps_float32():
    maps = np.zeros((2, 1, 4, 4), np.float32)
    maps[0, 0, 0, 0] = 1.0
    masks = np.zeros((2, 1, 4, 4), np.uint8)
    masks[0, 0, 0, 0] = 1
    assert pixel_auroc(maps, masks) == 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: image_auroc([0.1, 0.2, 0.3], [0, 1]), "2 entries but there are 3"),
        (lambda: image_auroc([0.1, 0.2], [1, 1]), "all 2 are abnormal"),
        (lambda: image_auroc([0.1, 0.2], [0, 0]), "all 2 are normal"),
        (lambda: image_auroc([0.1, 0.2], [0, 2]), "must be 0 (normal) or 1 (abnormal)"),
        (lambda: image_auroc([0.1, float("nan")], [0, 1]), "NaN"),
        (lambda: image_auroc(np.zeros((2, 2)), [0, 1]), "one score per image"),
        (lambda: pixel_auroc(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 5))), "shape"),
        (lambda: pixel_auroc(np.zeros((2, 1, 4, 4)), np.full((2, 1, 4, 4), 255)), "binary (0/1)"),
        (lambda: pixel_auroc(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4))), "no lesion pixel"),
        (lambda: pixel_auroc(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4))), "(N, 1, H, W)"),
    ],
)
def test_errors_name_the_problem(call, message):
    with pytest.raises(MetricError, match=None) as info:
        call()
    assert message in str(info.value)
    assert isinstance(info.value, MsaclError)  # the CLI prints it and exits 1


def _naive_stratified_bootstrap(s, y, n, level, seed):
    """Percentile interval of the AUROC over n stratified resamples, written from the definitions with its own
    random numbers (numpy's, not bootstrap_ci's draws): each resample draws as many abnormal images from the
    abnormal ones and as many normal images from the normal ones, with replacement; the AUROC of a resample
    is P(score of an abnormal > score of a normal) + P(equal) / 2 over all its pairs."""
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    p = pos[rng.integers(0, pos.size, (n, pos.size))][:, :, None]
    q = neg[rng.integers(0, neg.size, (n, neg.size))][:, None, :]
    stats = ((p > q) + 0.5 * (p == q)).mean(axis=(1, 2))
    alpha = 100 * (1 - level) / 2
    return np.percentile(stats, [alpha, 100 - alpha])


def test_bootstrap_ci_matches_naive_reference_and_is_seeded():
    s, y = _scores_labels(5, n=60, levels=6)  # few score levels: ties between the classes
    # Two independent bootstraps of 4000 resamples agree up to Monte Carlo error (measured: 0.008); one that
    # counted ties as losses (0.09 lower) or used another level would not.
    lo, hi = bootstrap_ci(s, y, n_resamples=4000, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose([lo, hi], _naive_stratified_bootstrap(s, y, 4000, 0.95, 3), atol=0.015)
    lo90, hi90 = bootstrap_ci(s, y, n_resamples=4000, level=0.9, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose([lo90, hi90], _naive_stratified_bootstrap(s, y, 4000, 0.9, 3), atol=0.015)
    assert lo < lo90 <= image_auroc(s, y) <= hi90 < hi
    again = bootstrap_ci(s, y, n_resamples=4000, generator=torch.Generator().manual_seed(3))
    assert again == (lo, hi)
    other = bootstrap_ci(s, y, n_resamples=4000, generator=torch.Generator().manual_seed(4))
    assert other != (lo, hi)


def test_bootstrap_ci_keeps_the_class_counts():
    # 6 abnormal and 54 normal images: a resample of all 60 images at once would vary the number of abnormal
    # ones and move the lower end by 0.013; the stratified reference agrees within Monte Carlo error
    # (measured: at most 0.004 over three seeds with 20000 resamples).
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(6, int), np.zeros(54, int)]
    s = np.round((rng.normal(size=60) + y) * 1.5) / 1.5
    got = bootstrap_ci(s, y, n_resamples=20000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(got, _naive_stratified_bootstrap(s, y, 20000, 0.95, 0), atol=0.006)


def test_bootstrap_ci_narrows_with_more_images_and_custom_statistic():
    s_small, y_small = _scores_labels(0, n=40)
    s_big, y_big = _scores_labels(0, n=1000)
    lo_s, hi_s = bootstrap_ci(s_small, y_small, n_resamples=300)
    lo_b, hi_b = bootstrap_ci(s_big, y_big, n_resamples=300)
    assert hi_b - lo_b < hi_s - lo_s
    # a generic statistic goes through the same draws: sklearn's AUROC gives the same interval
    lo_g, hi_g = bootstrap_ci(s_small, y_small, n_resamples=300, statistic=lambda v, lab: roc_auc_score(lab, v))
    assert (lo_g, hi_g) == pytest.approx((lo_s, hi_s), abs=1e-12)
    with pytest.raises(MetricError, match="level"):
        bootstrap_ci(s_small, y_small, level=1.5)
