from __future__ import annotations

import csv
import json
import re

import pytest
from sklearn.metrics import roc_auc_score

from msacl.cli.main import main


def test_demo_runs_the_whole_pipeline_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32"]) == 0
    err = capsys.readouterr().err
    assert "synthetic" in err and str(out / "padim" / "report.html") in err
    # the time of each stage, for the README's figure
    assert re.search(r"\[demo\] done in \d+ s \(data \d+ s, pre-train \d+ s, fit PaDiM \d+ s, test \d+ s\)", err)
    # warnings the demo's own sizes would cause: too few held-out normals for 5 %, too few abnormal images for
    # the localisation groups
    assert "too few for a false-positive rate" not in err and "so the groups are identical" not in err
    metrics = json.loads((out / "padim" / "metrics.json").read_text())
    # the image AUROC is scikit-learn's over the per-image scores the demo writes, inside its bootstrap CI
    with open(out / "padim" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [int(r["label"]) for r in rows]
    assert (labels.count(0), labels.count(1)) == (metrics["n_normal"], metrics["n_abnormal"]) == (120, 120)
    # scores.csv rounds scores to 6 significant digits; rounding keeps their order but can tie two close
    # scores, and one tied normal / abnormal pair of the 120 x 120 moves the AUROC by 1 / 28800 < 1e-3.
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, [float(r["score"]) for r in rows]),
                                                   abs=1e-3)
    assert metrics["image_auroc_ci_low"] <= metrics["image_auroc"] <= metrics["image_auroc_ci_high"]
    # the synthetic lesions are clear: a working pipeline separates them (0.98 and 0.90 with one epoch at
    # 32 px, 0.996 and 0.98 at the demo's defaults); the old demo's 0.67 would fail here
    assert metrics["image_auroc"] > 0.9 and metrics["pixel_auroc"] > 0.8
    assert metrics["decision_n"] == 19 and metrics["decision_test_sensitivity"] > 0.5
    assert (out / "pretrain" / "encoder.pt").is_file()
    report = (out / "padim" / "report.html").read_text()
    # the headline block comes first, before any picture or table, with the figures of metrics.json
    head = report.index("class='headline'")
    assert head < report.index("<h2>") < report.index("<h2>All metrics</h2>")
    assert "<b>synthetic</b>" in report[head:report.index("<h2>")]
    assert f"<div class='value'>{metrics['image_auroc']:.3f}</div>" in report
    assert main(["demo", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err


def test_demo_lesions_change_only_the_abnormal_images(tmp_path):
    import numpy as np
    from PIL import Image

    from msacl.cli.demo import SYNTHETIC
    from msacl.data.synthetic import write_synthetic
    from msacl.errors import DataError

    counts = dict(size=32, n_train=3, n_test_normal=2, n_test_abnormal=6)
    lesions = {k: v for k, v in SYNTHETIC.items() if k.startswith("lesion_")}
    plain, demo = write_synthetic(tmp_path / "a", **counts), write_synthetic(tmp_path / "b", **counts, **lesions)
    files = sorted(p.relative_to(plain) for p in plain.rglob("*.png"))
    same = [f for f in files if (plain / f).read_bytes() == (demo / f).read_bytes()]
    assert same == [f for f in files if f.parts[0] == "train" or f.parts[1] == "normal"]

    def area(root):  # noqa: ANN001, ANN202
        return np.mean([(np.asarray(Image.open(p)) > 0).mean() for p in sorted((root / "test/masks").iterdir())])

    assert area(demo) > 1.5 * area(plain)  # radius 0.12-0.2 of the side against 0.08-0.15
    assert "lesion_contrast=1.5" in (demo / "README.txt").read_text()
    for bad in (dict(lesion_radius=(0.2, 0.1)), dict(lesion_strength=(0.5, 1.5)), dict(lesion_contrast=0)):
        with pytest.raises(DataError, match=next(iter(bad))):
            write_synthetic(tmp_path / "c", **counts, **bad)


@pytest.mark.slow
def test_demo_at_its_defaults_prints_no_warning(tmp_path, capsys):
    """The demo as ``make demo`` runs it (about a minute): no warning of its own making, the centres frozen
    after a burn-in that reached its criterion."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err.lower(), err
    centres = json.loads((out / "pretrain" / "centres.json").read_text())
    assert centres["separated"] and centres["burnin"]["reached"]
    assert json.loads((out / "padim" / "metrics.json").read_text())["image_auroc"] > 0.95
