from __future__ import annotations

import json

from msacl.cli.main import main


def test_demo_runs_the_whole_pipeline_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32"]) == 0
    err = capsys.readouterr().err
    assert "synthetic" in err and str(out / "padim" / "report.html") in err
    metrics = json.loads((out / "padim" / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["pixel_auroc"] is not None
    assert (out / "pretrain" / "encoder.pt").is_file() and (out / "padim" / "report.html").is_file()
    assert main(["demo", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
