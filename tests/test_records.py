"""Typed metrics / threshold records read and write the flat JSON of earlier runs unchanged."""

from __future__ import annotations

import json

import torch

from msacl.metrics import evaluate
from msacl.metrics.calibrate import decide, evaluate_decision
from msacl.metrics.records import DecisionMetrics, Metrics, ThresholdRecord


def _split(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * 12 + [1] * 12)
    scores = torch.rand(24, generator=g) + labels
    masks = torch.zeros(24, 1, 16, 16)
    masks[12:, :, 4:10, 4:10] = 1
    maps = torch.rand(24, 1, 16, 16, generator=g) + masks
    return scores, labels, maps, masks


def test_evaluate_record_round_trips_with_the_same_keys():
    scores, labels, maps, masks = _split()
    flat = json.loads(json.dumps(evaluate(scores, labels, maps, masks, threshold=1.0, n_bootstrap=50)))
    m = Metrics.from_dict(flat)
    assert m.pixel is not None and m.pixel.threshold == 1.0 and m.pixel.threshold_rule == "given"
    assert m.image_auroc == flat["image_auroc"] and m.decision is None and m.extra == {}
    assert m.to_dict() == flat
    # Without masks there is no pixel record and no pixel key.
    image_only = evaluate(scores, labels, n_bootstrap=0)
    m = Metrics.from_dict(image_only)
    assert m.pixel is None and "pixel_auroc" not in m.to_dict() and m.to_dict() == image_only


def test_metrics_json_of_msacl_test_round_trips():
    scores, labels, maps, masks = _split(1)
    calibration = {"n": 40, "source": "held out", "image_scores": torch.rand(40).tolist(),
                   "map_max": (torch.rand(40) + 1).tolist()}
    flat = evaluate(scores, labels, maps, masks, n_bootstrap=0)
    flat |= {"test_seconds": 0.5, "detector": "padim", "test_data": "DIR", "some_future_key": [1, 2]}
    flat |= evaluate_decision(decide(calibration, 0.1), scores, labels, maps, masks)["metrics"]
    flat = json.loads(json.dumps(flat))
    m = Metrics.from_dict(flat)
    assert m.decision is not None and m.decision.fpr_target == 0.1 and m.decision.n == 40
    assert "threshold" in m.decision.pixel and "normal_images_flagged" in m.decision.pixel
    assert m.detector == "padim" and m.test_seconds == 0.5 and m.extra == {"some_future_key": [1, 2]}
    assert m.to_dict() == flat
    # A bench line keeps the numbers only.
    numbers = m.numbers()
    assert numbers["image_auroc"] == flat["image_auroc"] and numbers["decision_n"] == 40
    assert "notes" not in numbers and "detector" not in numbers and "decision_rule" not in numbers


def test_decision_metrics_from_a_record_without_decision_keys_is_none():
    assert DecisionMetrics.from_dict({"image_auroc": 0.5}) is None


def test_threshold_record_round_trips_threshold_json():
    full = {"threshold": 0.25, "rule": "best mean Dice on val", "display_range": [0.0, 2.5]}
    t = ThresholdRecord.from_dict(full)
    assert t.threshold == 0.25 and t.display_range == (0.0, 2.5)
    assert t.to_dict() == full
    bare = {"threshold": None, "rule": "none: no val/ masks and no held-out normals"}
    assert ThresholdRecord.from_dict(bare).to_dict() == bare
