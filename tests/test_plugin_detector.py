"""A detector written outside msacl (``tests/plugin_detector.py``: one class and one registration line), then
every verb of the CLI uses it (fit, resume, test, predict, export) with no other file touched."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from msacl.cli.main import main
from msacl.names import DETECTOR_CLASSES


@pytest.fixture
def tiny_ae():
    """The plugin's class, registered by importing its module, and unregistered afterwards."""
    module = importlib.import_module("plugin_detector")
    yield module.TinyAE
    DETECTOR_CLASSES.paths.pop("tiny_ae", None)


def _fit(data, out, *extra: str) -> int:  # noqa: ANN001
    return main(["fit", "--detector", "tiny_ae", "--data", str(data), "--out", str(out), "--quiet",
                 "--set", "width=8", "--set", "batch_size=16", "--set", "lr=0.01", *extra])


def test_a_detector_defined_outside_msacl_goes_through_every_verb(tiny_ae, synthetic_data, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _fit(synthetic_data, full, "--set", "epochs=2") == 0
    # An interrupted fit: one epoch written, then continued to two with --resume; the same detector, bit for bit.
    assert _fit(synthetic_data, part, "--set", "epochs=1") == 0
    tiny_ae.steps = 0
    assert _fit(synthetic_data, part, "--set", "epochs=2", "--resume", "--force") == 0
    assert tiny_ae.steps == 4  # the second epoch only: 58 images in batches of 16
    a = torch.load(full / "detector.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "detector.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["test", "--run", str(full), "--no-report", "--quiet"]) == 0
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["detector"] == "tiny_ae" and 0 <= metrics["image_auroc"] <= 1
    image = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
    assert main(["predict", "--run", str(full), str(image), "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 2  # header and the image
    capsys.readouterr()
    pytest.importorskip("onnxruntime", reason="export needs the export extra")
    pytest.importorskip("onnx", reason="export needs the export extra")
    assert main(["export", "--run", str(full), "--format", "onnx", "--parity-images", "4"]) == 0
    assert json.loads((full / "export.json").read_text())["onnx"]["parity"]["passed"]
