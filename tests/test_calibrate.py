"""Split-conformal thresholds: against a naive reference written from the guarantee, and by simulation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from msacl.errors import MsaclError
from msacl.metrics.calibrate import (
    conformal_rank,
    conformal_threshold,
    decide,
    evaluate_decision,
    min_calibration_size,
    operating_point,
    pixel_operating_point,
)


def naive_threshold(scores: list[float], alpha: float) -> float | None:
    """The smallest held-out score t with (#{s > t} + 1) / (n + 1) <= alpha, i.e. the guarantee read backwards;
    None when no held-out score qualifies (n too small)."""
    a = Fraction(str(alpha))
    n = len(scores)
    for t in sorted(scores):
        if (sum(s > t for s in scores) + 1) <= a * (n + 1):
            return t
    return None


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.2, 0.3, 0.5])
def test_threshold_matches_naive_reference(alpha):
    rng = np.random.default_rng(int(alpha * 1000))
    for n in [1, 2, 3, 5, 9, 10, 19, 20, 21, 39, 50, 99, 100, 101, 250]:
        scores = rng.normal(size=n).tolist()
        thr = conformal_threshold(scores, alpha)
        ref = naive_threshold(scores, alpha)
        if ref is None:
            assert thr.warning is not None and "too few" in thr.warning
            assert thr.threshold == max(scores) and thr.k == n
            assert thr.fpr_bound == pytest.approx(1 / (n + 1)) and thr.fpr_bound > alpha
        else:
            assert thr.warning is None, (n, alpha)
            assert thr.threshold == ref, (n, alpha)
            assert thr.fpr_bound <= alpha + 1e-12
            assert thr.fpr_bound == pytest.approx(sum(s > ref for s in scores) / (n + 1) + 1 / (n + 1))


def test_rank_is_exact_where_floats_are_not():
    # (9 + 1) * (1 - 0.7) is 3.0000000000000004 in floats, whose ceil (4) would waste a tenth of the budget.
    assert conformal_rank(9, 0.7) == 3 and conformal_rank(99, 0.7) == 30
    assert conformal_rank(19, 0.05) == 19
    assert conformal_rank(99, 0.01) == 99 and conformal_rank(98, 0.01) == 99
    assert min_calibration_size(0.05) == 19 and min_calibration_size(0.01) == 99
    assert conformal_threshold(list(range(19)), 0.05).warning is None
    assert conformal_threshold(list(range(18)), 0.05).warning is not None
    with pytest.raises(MsaclError, match=r"\(0, 1\)"):
        conformal_rank(10, 0.0)
    with pytest.raises(MsaclError, match="no held-out"):
        conformal_threshold([], 0.1)
    with pytest.raises(MsaclError, match="NaN"):
        conformal_threshold([1.0, float("nan")], 0.1)


@pytest.mark.parametrize("n, alpha", [(19, 0.05), (50, 0.1), (30, 0.2)])
def test_false_positive_rate_is_guaranteed_by_simulation(n, alpha):
    """Averaged over calibration draws, the share of new normal images called abnormal is (n + 1 - k) / (n + 1),
    at most alpha, for any distribution (here a skewed one, ties impossible)."""
    rng = np.random.default_rng(n)
    reps, m = 4000, 50
    cal = rng.lognormal(size=(reps, n))
    new = rng.lognormal(size=(reps, m))
    k = conformal_rank(n, alpha)
    t = np.sort(cal, axis=1)[:, k - 1 : k]
    fpr = float((new > t).mean())
    exact = (n + 1 - k) / (n + 1)
    se = np.sqrt(exact * (1 - exact) / reps)  # the draws of one repetition are dependent: per-repetition SE
    assert exact <= alpha
    assert abs(fpr - exact) < 4 * se, (fpr, exact)
    # an off-by-one rank (k - 1) would break the target where the rule is tight
    t_bad = np.sort(cal, axis=1)[:, k - 2 : k - 1]
    assert float((new > t_bad).mean()) > exact + 0.5 / (n + 1)


def test_decide_and_operating_points():
    cal = {"source": "held-out", "n": 20, "image_scores": list(range(20)), "map_max": [2 * v for v in range(20)]}
    d = decide(cal, 0.05)
    assert d["image"]["threshold"] == 19 and d["pixel"]["threshold"] == 38 and not d["warnings"]
    assert "any flagged pixel" in d["pixel"]["guarantee"] and "n held-out normal map maxima" in d["pixel"]["rule"]
    scores = np.array([1.0, 19.0, 25.0, 18.0, 30.0])
    labels = np.array([0, 0, 0, 1, 1])
    op = operating_point(scores, labels, 19.0)
    assert op["fpr"] == pytest.approx(1 / 3) and op["sensitivity"] == pytest.approx(1 / 2)  # 19 is not above 19
    maps = np.zeros((5, 1, 4, 4))
    maps[2, 0, 0, 0] = 40.0  # one false pixel in a normal image
    maps[4, 0, :2, :2] = 50.0
    masks = np.zeros((5, 1, 4, 4))
    masks[3, 0, 2:, 2:] = 1
    masks[4, 0, :2, :2] = 1
    pop = pixel_operating_point(maps, labels, 38.0, masks)
    assert pop["normal_images_flagged"] == pytest.approx(1 / 3)
    assert pop["pixel_fpr"] == pytest.approx(1 / 48)
    assert pop["pixel_sensitivity"] == pytest.approx(4 / 8)
    assert pop["dice"] == pytest.approx((0.0 + 1.0) / 2)
    rec = evaluate_decision(d, scores, labels, maps, masks)
    assert rec["metrics"]["decision_test_fpr"] == pytest.approx(1 / 3)
    assert rec["metrics"]["pixel_decision_normal_images_flagged"] == pytest.approx(1 / 3)
