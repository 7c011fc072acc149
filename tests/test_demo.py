from __future__ import annotations

import csv
import json

import pytest
from sklearn.metrics import roc_auc_score

from msacl.cli.main import main


def test_demo_runs_the_whole_pipeline_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32"]) == 0
    err = capsys.readouterr().err
    assert "synthetic" in err and str(out / "padim" / "report.html") in err
    metrics = json.loads((out / "padim" / "metrics.json").read_text())
    # the image AUROC is scikit-learn's over the per-image scores the demo writes, inside its bootstrap CI
    with open(out / "padim" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [int(r["label"]) for r in rows]
    assert (labels.count(0), labels.count(1)) == (metrics["n_normal"], metrics["n_abnormal"]) == (32, 32)
    # scores.csv rounds scores to 6 significant digits; rounding keeps their order but can tie two close
    # scores, and one tied normal / abnormal pair of the 32 x 32 moves the AUROC by 1 / 2048 < 1e-3.
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, [float(r["score"]) for r in rows]),
                                                   abs=1e-3)
    assert metrics["image_auroc_ci_low"] <= metrics["image_auroc"] <= metrics["image_auroc_ci_high"]
    # the lesions are found at pixel level (0.65 with one epoch at 32 px; chance is 0.5)
    assert metrics["pixel_auroc"] > 0.55
    assert (out / "pretrain" / "encoder.pt").is_file() and (out / "padim" / "report.html").is_file()
    assert main(["demo", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
