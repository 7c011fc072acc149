"""Typed records of a fitted detector's threshold and a test split's metrics.

On disk they are flat JSON (``threshold.json``, ``metrics.json``, the ``metrics`` of a bench ``results.jsonl``
line), one key per figure, easy to read with ``jq`` or pandas: :meth:`to_dict` writes those keys and
:meth:`from_dict` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ThresholdRecord:
    """``threshold.json``: the IoU / Dice threshold chosen at fit time (``msacl.detectors.pipeline``).

    Attributes:
        threshold: pixel-score threshold, or None when nothing was held out to choose it on.
        rule: how it was chosen.
        display_range: (low, high) of the maps it was chosen on: one colour scale for every heat map of
            ``msacl predict``; None without such maps.

    The normal / abnormal decision is not stored: each verb decides it from ``calibration.json`` at its own
    ``--fpr`` (``msacl.metrics.calibrate.decide``).
    """

    threshold: float | None
    rule: str
    display_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "rule": self.rule}
        if self.display_range is not None:
            out["display_range"] = list(self.display_range)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThresholdRecord:
        lo_hi = d.get("display_range")
        return cls(d.get("threshold"), d.get("rule", "none"), None if lo_hi is None else (lo_hi[0], lo_hi[1]))


@dataclass
class PixelMetrics:
    """Pixel and segmentation metrics (``msacl.metrics.evaluate`` with masks); the keys of ``metrics.json``."""

    pixel_auroc: float | None = None
    aupro: float | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    iou: float | None = None
    dice: float | None = None
    oracle_threshold: float | None = None
    iou_oracle: float | None = None
    dice_oracle: float | None = None
    groups_iou: float | None = None
    groups_iou_std: float | None = None
    groups_dice: float | None = None
    groups_dice_std: float | None = None
    groups_iou_oracle: float | None = None
    groups_dice_oracle: float | None = None
    groups_n: int | None = None
    groups_size: int | None = None
    min_area: int | None = None


@dataclass
class DecisionMetrics:
    """What the calibrated normal / abnormal decision did on the test split (``msacl.metrics.calibrate``).

    The fields are the ``decision_<name>`` keys of ``metrics.json``; ``pixel`` holds the ``pixel_decision_*``
    keys without that prefix (``threshold``, ``normal_images_flagged``, ``pixel_fpr``, ...).
    """

    fpr_target: float | None = None
    threshold: float | None = None
    n: int | None = None
    fpr_bound: float | None = None
    rule: str | None = None
    test_fpr: float | None = None
    test_sensitivity: float | None = None
    pixel: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat ``decision_*`` / ``pixel_decision_*`` keys."""
        out = {_DECISION + k: getattr(self, k) for k in _DECISION_KEYS}
        out.update({_PIXEL_DECISION + k: v for k, v in self.pixel.items()})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionMetrics | None:
        """The decision keys of a flat record (``msacl.metrics.calibrate.evaluate_decision``'s ``metrics``, or
        ``metrics.json``); None when it has none."""
        pixel = {k[len(_PIXEL_DECISION):]: v for k, v in d.items() if k.startswith(_PIXEL_DECISION)}
        own = {k: d[_DECISION + k] for k in _DECISION_KEYS if _DECISION + k in d}
        return cls(**own, pixel=pixel) if own or pixel else None


_DECISION = "decision_"
_PIXEL_DECISION = "pixel_decision_"
_PIXEL_KEYS = tuple(f.name for f in fields(PixelMetrics))
_DECISION_KEYS = ("fpr_target", "threshold", "n", "fpr_bound", "rule", "test_fpr", "test_sensitivity")


@dataclass
class Metrics:
    """The metrics of one test split: ``msacl.metrics.evaluate``'s record plus what ``msacl test`` adds.

    Attributes:
        n_images, n_normal, n_abnormal: test images.
        image_auroc: None where a class is absent (the reason is in ``notes``).
        image_auroc_ci_low, image_auroc_ci_high, ci_level: bootstrap interval of ``image_auroc``.
        notes: what could not be computed, and why.
        pixel: pixel and segmentation metrics; None when the split has no lesion masks.
        decision: the calibrated decision on the split; None without one.
        test_seconds: time to score the split.
        detector, test_data: the detector's name and the data folder (``msacl test``).
        extra: keys this version does not know, kept so that reading and writing a file keeps them.
    """

    n_images: int | None = None
    n_normal: int | None = None
    n_abnormal: int | None = None
    image_auroc: float | None = None
    image_auroc_ci_low: float | None = None
    image_auroc_ci_high: float | None = None
    ci_level: float | None = None
    notes: list[str] = field(default_factory=list)
    pixel: PixelMetrics | None = None
    decision: DecisionMetrics | None = None
    test_seconds: float | None = None
    detector: str | None = None
    test_data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _IMAGE_KEYS = ("n_images", "n_normal", "n_abnormal", "image_auroc", "image_auroc_ci_low",
                   "image_auroc_ci_high", "ci_level", "notes")
    _RUN_KEYS = ("test_seconds", "detector", "test_data")

    def to_dict(self) -> dict[str, Any]:
        """The flat ``metrics.json`` record; ``test_seconds``, ``detector`` and ``test_data`` only when set."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._IMAGE_KEYS}
        out["notes"] = list(self.notes)
        if self.pixel is not None:
            out.update({k: getattr(self.pixel, k) for k in _PIXEL_KEYS})
        if self.decision is not None:
            out.update(self.decision.to_dict())
        out.update({k: getattr(self, k) for k in self._RUN_KEYS if getattr(self, k) is not None})
        out.update(self.extra)
        return out

    def numbers(self) -> dict[str, float | int | None]:
        """The numeric (or None) values of :meth:`to_dict`: the ``metrics`` of a bench result line."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, (int, float)) or v is None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        """Read a flat record (``metrics.json``, ``msacl.metrics.evaluate``'s dict, or any part of one)."""
        rest = dict(d)
        kw: dict[str, Any] = {k: rest.pop(k) for k in (*cls._IMAGE_KEYS, *cls._RUN_KEYS) if k in rest}
        kw["notes"] = list(kw.get("notes") or [])
        if "pixel_auroc" in rest:
            kw["pixel"] = PixelMetrics(**{k: rest.pop(k) for k in _PIXEL_KEYS if k in rest})
        kw["decision"] = DecisionMetrics.from_dict(rest)
        if kw["decision"] is not None:
            for k in kw["decision"].to_dict():
                rest.pop(k, None)
        return cls(**kw, extra=rest)
