"""Decide normal / abnormal at a target false-positive rate, calibrated on normal images only (split conformal).

``msacl fit`` keeps the scores of normal images the detector was not fitted on (the held-out part of
``train/normal``, or ``val/normal``) in ``RUN/calibration.json``. For a target false-positive rate
``alpha`` and ``n`` such scores the image threshold is the ``k``-th smallest of them, with
``k = ceil((n + 1) (1 - alpha))``, and an image is called abnormal when its score is *strictly above* it.
If the new image and the ``n`` held-out normals are exchangeable (same source, same preparation), then

    P(a new normal image is called abnormal) <= (n + 1 - k) / (n + 1) <= alpha,

for every ``n``, whatever the score distribution: the split-conformal guarantee (Vovk et al. 2005; Lei
et al. 2018). The probability is over the held-out draw and the new image together; with continuous
scores it is exactly ``(n + 1 - k) / (n + 1)``, so the rule wastes at most ``1 / (n + 1)`` of the budget.
It needs ``n >= 1 / alpha - 1`` (19 images for 5 %); with fewer the largest held-out score is used and
the guarantee is only ``1 / (n + 1)``, which :func:`conformal_threshold` says in its ``warning``.

The pixel threshold gets the same rule applied to the *largest map value* of each held-out normal image,
so a pixel is flagged when its map value is above it, and

    P(a new normal image has any flagged pixel) <= alpha.

The unit is the image, not the pixel, because pixels of one image are not exchangeable with each other
(they share the image's brightness, texture and any artefact) while whole images are. For detectors
whose image score is the map's maximum (PaDiM, PatchCore) the two thresholds coincide, so an image
called abnormal always shows a flagged region and an image called normal never does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from msacl.errors import MsaclError

DEFAULT_FPR = 0.05
RULE = "split conformal: the ceil((n+1)(1-alpha))-th smallest of n held-out normal {stat}; abnormal if above"


def conformal_rank(n: int, fpr: float) -> int:
    """``k = ceil((n + 1) (1 - fpr))`` in exact arithmetic (in floats ``10 * (1 - 0.7)`` is 3.0000000000000004).

    Args:
        n: number of held-out normal scores (>= 1).
        fpr: target false-positive rate in (0, 1).

    Returns:
        k, which may exceed ``n`` when ``n`` is too small for ``fpr``.
    """
    if not 0.0 < fpr < 1.0:
        raise MsaclError(f"the false-positive rate must be in (0, 1); got {fpr}")
    if n < 1:
        raise MsaclError("no held-out normal images to calibrate on")
    a = Fraction(repr(float(fpr)))  # the decimal the user typed, exactly
    return math.ceil((n + 1) * (1 - a))


def min_calibration_size(fpr: float) -> int:
    """Smallest ``n`` for which :func:`conformal_rank` is at most ``n`` (19 for 0.05, 99 for 0.01)."""
    a = Fraction(repr(float(fpr)))
    return max(1, math.ceil((1 - a) / a))


@dataclass
class Threshold:
    """A calibrated threshold and what it guarantees.

    Attributes:
        threshold: values strictly above it are abnormal.
        fpr: the target false-positive rate asked for.
        n: held-out normal scores it was calibrated on.
        k: rank of the threshold among them (1 = smallest).
        fpr_bound: guaranteed ``P(normal called abnormal) <= fpr_bound`` (``(n + 1 - k) / (n + 1)``).
        rule: the rule in words.
        guarantee: the guarantee in words.
        warning: why ``fpr_bound`` exceeds ``fpr`` (too few held-out images), or None.
    """

    threshold: float
    fpr: float
    n: int
    k: int
    fpr_bound: float
    rule: str
    guarantee: str
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conformal_threshold(normal_scores: Any, fpr: float = DEFAULT_FPR, *, stat: str = "image scores",
                        event: str = "a new normal image is called abnormal") -> Threshold:
    """The split-conformal threshold of the module docstring.

    Args:
        normal_scores: scores of held-out normal images (not used for fitting). Shape: (n,).
        fpr: target false-positive rate in (0, 1).
        stat: what the scores are, for the rule text ("image scores", "map maxima").
        event: the event whose probability is bounded, for the guarantee text.

    Returns:
        The threshold; ``warning`` is set when ``n`` is too small for ``fpr``.
    """
    s = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if s.size and not np.isfinite(s).all():
        raise MsaclError(f"held-out normal {stat} contain NaN or inf; the detector's output is not usable")
    n = int(s.size)
    k = conformal_rank(n, fpr)
    warning = None
    if k > n:
        need = min_calibration_size(fpr)
        warning = (f"{n} held-out normal images are too few for a false-positive rate of {fpr:g} (the rule needs "
                   f"at least {need}); the threshold is the largest held-out score, which guarantees a "
                   f"false-positive rate of at most 1/(n+1) = {1 / (n + 1):.3g} only. Fit with a larger "
                   f"--holdout or more training images, or ask for --fpr {1 / (n + 1):.2g} or more")
        k = n
    t = float(np.sort(s)[k - 1])
    bound = (n + 1 - k) / (n + 1)
    guarantee = (f"P({event}) <= {bound:.4g} (target {fpr:g}) for images exchangeable with the {n} held-out "
                 f"normals")
    return Threshold(t, float(fpr), n, k, bound, RULE.format(stat=stat), guarantee, warning)


def decide(calibration: dict[str, Any], fpr: float = DEFAULT_FPR) -> dict[str, Any]:
    """Image and pixel thresholds at ``fpr`` from a run's ``calibration.json`` record.

    Args:
        calibration: ``{"n", "image_scores", "map_max", "source"}`` as written by ``msacl fit``.
        fpr: target false-positive rate.

    Returns:
        ``{"fpr", "source", "image": Threshold dict, "pixel": Threshold dict, "warnings": [...]}``.
    """
    image = conformal_threshold(calibration["image_scores"], fpr)
    pixel = conformal_threshold(calibration["map_max"], fpr, stat="map maxima",
                                event="a new normal image has any flagged pixel")
    warnings = [image.warning] if image.warning else []
    return {"fpr": float(fpr), "source": calibration.get("source"), "image": image.to_dict(),
            "pixel": pixel.to_dict(), "warnings": warnings}


def operating_point(scores: Any, labels: Any, threshold: float) -> dict[str, Any]:
    """Test false-positive rate and sensitivity of ``score > threshold`` (None where a class is absent)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    flagged = s > threshold
    n_neg, n_pos = int((~y).sum()), int(y.sum())
    return {"fpr": float(flagged[~y].mean()) if n_neg else None, "n_normal": n_neg,
            "false_positives": int(flagged[~y].sum()),
            "sensitivity": float(flagged[y].mean()) if n_pos else None, "n_abnormal": n_pos,
            "true_positives": int(flagged[y].sum())}


def pixel_operating_point(maps: Any, labels: Any, threshold: float, masks: Any = None) -> dict[str, Any]:
    """What the pixel threshold does on a test set.

    Returns:
        ``normal_images_flagged`` (share of normal images with any pixel above the threshold, the quantity
        the guarantee bounds), ``pixel_fpr`` (share of normal-image pixels above it) and, with masks,
        ``pixel_sensitivity`` (share of lesion pixels above it) and ``dice`` (mean over abnormal images).
    """
    m = np.asarray(maps, dtype=np.float32)
    m = m.reshape(m.shape[0], -1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    hot = m > threshold
    out: dict[str, Any] = {
        "normal_images_flagged": float(hot[~y].any(1).mean()) if (~y).any() else None,
        "pixel_fpr": float(hot[~y].mean()) if (~y).any() else None,
        "abnormal_images_flagged": float(hot[y].any(1).mean()) if y.any() else None,
    }
    if masks is not None and y.any():
        g = np.asarray(masks).reshape(m.shape[0], -1) > 0.5
        if g.shape == m.shape and g[y].any():
            out["pixel_sensitivity"] = float(hot[g].mean())
            inter = (hot[y] & g[y]).sum(1)
            denom = hot[y].sum(1) + g[y].sum(1)
            out["dice"] = float(np.mean(np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)))
    return out


def evaluate_decision(decision: dict[str, Any], scores: Any, labels: Any, maps: Any = None,
                      masks: Any = None) -> dict[str, Any]:
    """What the calibrated thresholds of :func:`decide` do on a labelled test set (``msacl test``).

    Returns:
        ``decision`` plus ``test`` (image operating point), ``pixel_test`` (pixel operating point, when there
        are maps) and ``metrics``: the flat ``decision_*`` / ``pixel_decision_*`` keys of ``metrics.json``.
    """
    img, pix = decision["image"], decision["pixel"]
    test = operating_point(scores, labels, img["threshold"])
    pixel_test = None if maps is None else pixel_operating_point(maps, labels, pix["threshold"], masks)
    flat = {
        "decision_fpr_target": decision["fpr"], "decision_threshold": img["threshold"], "decision_n": img["n"],
        "decision_fpr_bound": img["fpr_bound"], "decision_rule": img["rule"],
        "decision_test_fpr": test["fpr"], "decision_test_sensitivity": test["sensitivity"],
        "pixel_decision_threshold": pix["threshold"],
    }
    if pixel_test is not None:
        flat.update({f"pixel_decision_{k}": v for k, v in pixel_test.items()})
    return {**decision, "test": test, "pixel_test": pixel_test, "metrics": flat}
